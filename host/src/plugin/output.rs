//! Where a plugin's stdout and stderr go.
//!
//! A Rust plugin's panic message is written to stderr just before it traps;
//! the trap itself says only "unreachable executed". Keeping the tail of the
//! output lets the DLQ reason and the log say *why* the plugin died. Writes
//! always succeed (a chatty plugin must not fail because of its prints), and
//! only the last [`CAPACITY`] bytes are kept.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of output kept per instance between two drains.
pub const CAPACITY: usize = 4096;

/// A bounded, shared tail of everything a plugin wrote.
#[derive(Clone, Default)]
pub struct OutputTail {
    buffer: Arc<Mutex<Tail>>,
}

#[derive(Default)]
struct Tail {
    bytes: VecDeque<u8>,
    dropped: bool,
}

impl OutputTail {
    fn push(&self, data: &[u8]) {
        let mut tail = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        tail.bytes.extend(data);
        let excess = tail.bytes.len().saturating_sub(CAPACITY);
        if excess > 0 {
            tail.bytes.drain(..excess);
            tail.dropped = true;
        }
    }

    /// Takes what was written since the last call, as text.
    pub fn drain(&self) -> String {
        let mut tail = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = tail.bytes.drain(..).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if std::mem::take(&mut tail.dropped) {
            format!("…{text}")
        } else {
            text
        }
    }
}

impl IsTerminal for OutputTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for OutputTail {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(CAPACITY)
    }
}

#[async_trait::async_trait]
impl Pollable for OutputTail {
    async fn ready(&mut self) {}
}

impl AsyncWrite for OutputTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_tail() {
        let tail = OutputTail::default();
        tail.push(b"hello ");
        tail.push(b"world");
        assert_eq!(tail.drain(), "hello world");
        assert_eq!(tail.drain(), "");
        tail.push(&vec![b'a'; CAPACITY]);
        tail.push(b"end");
        let text = tail.drain();
        assert!(text.starts_with('…') && text.ends_with("aend"));
        assert_eq!(text.chars().count(), CAPACITY + 1);
    }
}
