//! A plugin whose every event is a slow read-modify-write of the one key
//! its data names: it reads `key`, waits `pause_ms`, and writes the value
//! plus one. Events on one key conflict with each other and with nothing
//! else, so a test can hold one hot key beside events that touch their own.

use eventhost_plugin::{Event, Failure, Guest};

#[derive(serde::Deserialize)]
struct Bump {
    key: String,
    #[serde(default)]
    pause_ms: u64,
}

struct HotKey;

impl Guest for HotKey {
    fn handle(event: Event) -> Result<(), Failure> {
        let bump: Bump = eventhost_plugin::data(&event)?;
        let value: u64 = match eventhost_plugin::state_get(&bump.key) {
            Some(text) => text.parse().map_err(|_| {
                Failure::Reject(format!("{} holds {text:?}, not a number", bump.key))
            })?,
            None => 0,
        };
        if bump.pause_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(bump.pause_ms));
        }
        eventhost_plugin::state_set(&bump.key, &(value + 1).to_string());
        Ok(())
    }
}

eventhost_plugin::export!(HotKey);
