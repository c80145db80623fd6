//! Test plugin that implements eventhost's `subscriber` world but also
//! imports `acme:ledger/api@1.0.0`, an interface the host does not offer
//! (see `wit/`). eventhost must refuse it at load, naming the import. Its
//! `handle` calls the import, so the import stays in the component.

#[allow(
    clippy::too_many_arguments,
    reason = "generated code: the lowered `handle` export takes one argument per flattened field"
)]
mod bindings {
    wit_bindgen::generate!({
        // The eventhost package first: this crate's world includes it.
        path: ["../../wit", "wit"],
        world: "eventhost-test:extra-import/ledger-plugin",
        // Bindings for every interface the world uses, the ledger included.
        generate_all,
    });
}

use bindings::acme::ledger::api;
use bindings::eventhost::plugin::host;
use bindings::eventhost::plugin::types::{Event, Failure};

struct ExtraImport;

impl bindings::Guest for ExtraImport {
    fn handle(event: Event) -> Result<(), Failure> {
        let balance = api::post(&event.id, 100);
        host::state_set(&format!("balance:{}", event.id), &balance.to_string());
        Ok(())
    }
}

bindings::export!(ExtraImport with_types_in bindings);
