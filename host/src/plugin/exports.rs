//! What a component exports, read from its bytes before anything is
//! compiled: one that cannot be a subscriber is refused in milliseconds,
//! not after a compile that a hostile component can make last minutes.

use wasmparser::{ComponentExternalKind, Parser, Payload};

/// Refuses a component whose outermost level exports no function named
/// `handle`, naming what it exports; anything it cannot read is left for
/// the compiler to report.
pub(super) fn refuse_without_handle(bytes: &[u8]) -> Result<(), String> {
    let mut depth = 0usize;
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Ok(());
        };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let Ok(export) = export else {
                        return Ok(());
                    };
                    if export.name.name == "handle" && export.kind == ComponentExternalKind::Func {
                        return Ok(());
                    }
                    exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Err(no_handle(&exports))
}

/// Why a component with these exports is not a subscriber.
pub(super) fn no_handle(exports: &[String]) -> String {
    format!(
        "does not implement the eventhost:plugin/subscriber world: it has no exported function \
         `handle` (it exports: {}); build it against wit/eventhost.wit",
        if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component holding one core module and nothing else.
    fn bare_component() -> Vec<u8> {
        let module = b"\0asm\x01\0\0\0";
        let mut component = b"\0asm\x0d\x00\x01\x00".to_vec();
        component.push(1);
        component.push(module.len() as u8);
        component.extend_from_slice(module);
        component
    }

    #[test]
    fn a_component_exporting_nothing_is_refused_unread_by_the_compiler() {
        let err = refuse_without_handle(&bare_component()).unwrap_err();
        assert!(
            err.contains("no exported function `handle` (it exports: nothing)"),
            "{err}"
        );
    }

    #[test]
    fn what_it_cannot_read_is_left_to_the_compiler() {
        assert_eq!(refuse_without_handle(b"\0asm\x0d\x00\x01\x00\xff"), Ok(()));
    }
}
