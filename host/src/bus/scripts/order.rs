//! Order per key in the scripts: the Lua functions they share
//! (`order.lua`), and the waiting lists a call names.

use std::collections::HashMap;

use crate::bus::keys::OrderKeys;

/// `script` with the functions of `order.lua` in front of it (after its
/// `#!lua` line, which must stay first).
pub(super) fn with_order(script: &str) -> String {
    let order = include_str!("order.lua");
    match script.strip_prefix("#!lua\n") {
        Some(body) => format!("#!lua\n{order}\n{body}"),
        None => format!("{order}\n{script}"),
    }
}

/// The waiting lists one script call touches, each once: a record points
/// at its key's list by its place here, from 1 (0: no order). A list is
/// known by its subscriber (an index into the call's subscribers; 0 when
/// there is one) and its key, and named when the call is made.
#[derive(Debug, Default)]
pub(super) struct WaitingLists {
    lists: Vec<(usize, String)>,
    index: HashMap<(usize, String), usize>,
}

impl WaitingLists {
    /// The place of the list of `key` of `subscriber`, added if new.
    pub fn place(&mut self, subscriber: usize, key: &str) -> usize {
        let list = (subscriber, key.to_string());
        if let Some(&at) = self.index.get(&list) {
            return at;
        }
        self.lists.push(list.clone());
        self.index.insert(list, self.lists.len());
        self.lists.len()
    }

    /// The lists' names, in their places' order: `lists` is each
    /// subscriber's [`OrderKeys::lists`].
    pub fn names<'a>(&'a self, lists: &'a [&str]) -> impl Iterator<Item = String> + 'a {
        self.lists
            .iter()
            .map(|(subscriber, key)| OrderKeys::list_of(lists[*subscriber], key))
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}

/// A record's order argument: its list's place, and the key if any.
pub(super) fn order_args(place: Option<(usize, &str)>) -> Vec<Vec<u8>> {
    match place {
        None => vec![b"0".to_vec()],
        Some((at, key)) => vec![at.to_string().into_bytes(), key.as_bytes().to_vec()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::keys::Keys;

    #[test]
    fn a_list_is_named_once_and_places_count_from_one() {
        let keys = Keys::new("events:");
        let (pay, ship) = (keys.order("pay"), keys.order("ship"));
        let mut lists = WaitingLists::default();
        assert_eq!(lists.place(0, "o-1"), 1);
        assert_eq!(lists.place(1, "o-1"), 2);
        assert_eq!(lists.place(0, "o-1"), 1);
        let names = [pay.lists.as_str(), ship.lists.as_str()];
        assert_eq!(
            lists.names(&names).collect::<Vec<_>>(),
            ["events:order:pay:q:o-1", "events:order:ship:q:o-1"]
        );
        assert_eq!(pay.list("o-1"), "events:order:pay:q:o-1");
    }

    #[test]
    fn the_shared_functions_go_after_the_shebang() {
        let script = with_order("#!lua\nreturn 1\n");
        assert!(script.starts_with("#!lua\n-- Order per key"));
        assert!(script.ends_with("\nreturn 1\n"));
        assert!(with_order("return 2").starts_with("-- Order per key"));
    }
}
