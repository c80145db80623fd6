//! A valid WebAssembly component of another world (`wasi:cli/command`):
//! tests use it to prove eventhost refuses it with a message naming what is
//! missing.

fn main() {
    println!("I am a command, not an eventhost plugin");
}
