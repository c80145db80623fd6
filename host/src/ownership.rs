//! Whether a file or folder on disk can be trusted as far as its owner and
//! mode go: ours, and writable by no one else.
//!
//! What we run or load from disk (compiled code in the cache, build tools)
//! is only as safe as the folders it sits in: if another user may write
//! there, they may have replaced it. The compiled cache and `eventhost
//! build`'s tools folder both ask here, so the rule is one rule.

use std::os::unix::fs::MetadataExt as _;

/// Why a path cannot be trusted; the caller decides what follows (ignore
/// an entry, make a folder of ours private, refuse to run a tool).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// Another user owns it.
    #[error("it belongs to user {owner}, not to this user ({me})")]
    OtherOwner {
        /// Its owner's uid.
        owner: u32,
        /// Our effective uid.
        me: u32,
    },
    /// Its group or everyone may write it.
    #[error("others may write it (mode {mode:o})")]
    OthersMayWrite {
        /// Its permission bits.
        mode: u32,
    },
}

/// Our effective uid, the owner everything we trust must have.
pub fn me() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks that what `meta` describes is ours and that neither its group nor
/// others may write it (the owner is checked first: a file of another user
/// is untrusted whatever its mode).
pub fn check(meta: &std::fs::Metadata) -> Result<(), Untrusted> {
    let me = me();
    if meta.uid() != me {
        return Err(Untrusted::OtherOwner {
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Untrusted::OthersMayWrite { mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn with_mode(path: &std::path::Path, mode: u32) -> std::fs::Metadata {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::symlink_metadata(path).unwrap()
    }

    #[test]
    fn ours_and_written_by_us_alone_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o700, 0o755, 0o500] {
            assert_eq!(check(&with_mode(dir.path(), mode)), Ok(()), "{mode:o}");
        }
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(check(&with_mode(&file, 0o644)), Ok(()));
    }

    #[test]
    fn group_or_world_writable_is_not() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o770, 0o702, 0o1777] {
            assert_eq!(
                check(&with_mode(dir.path(), mode)),
                Err(Untrusted::OthersMayWrite { mode }),
                "{mode:o}"
            );
        }
        let err = check(&with_mode(dir.path(), 0o775)).unwrap_err();
        assert_eq!(err.to_string(), "others may write it (mode 775)");
    }

    #[test]
    fn another_users_folder_is_not_whatever_its_mode() {
        if me() != 0 {
            // `/` is root's.
            let meta = std::fs::metadata("/").unwrap();
            assert_eq!(
                check(&meta),
                Err(Untrusted::OtherOwner { owner: 0, me: me() })
            );
            return;
        }
        // As root: a folder handed to nobody, private as can be.
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let err = check(&with_mode(dir.path(), 0o700)).unwrap_err();
        assert_eq!(
            err,
            Untrusted::OtherOwner {
                owner: 65534,
                me: 0
            }
        );
        assert_eq!(
            err.to_string(),
            "it belongs to user 65534, not to this user (0)"
        );
    }
}
