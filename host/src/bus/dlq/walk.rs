//! Working through a DLQ a page at a time: the ids a replay or purge
//! takes ([`Ids`]), the walk over a stream's ids from a time on
//! ([`Walk`]), and the scan of whole letters a filter reads ([`Scan`]).

use super::*;

/// The ids a replay or purge works through, a page at a time.
pub(super) struct Ids<'a> {
    source: Source<'a>,
    /// Ids asked for that are not in the DLQ.
    pub(super) missing: Vec<String>,
}

pub(super) enum Source<'a> {
    /// Given ids, until taken.
    Given(Option<&'a [String]>),
    /// A walk through the summaries with a filter, started on the first
    /// page: a page costs [`PAGE_BUDGET`], not what producers wrote.
    Scanned {
        filter: &'a Filter,
        walk: Option<Walk>,
    },
}

impl<'a> Ids<'a> {
    pub(super) fn of(selection: &'a Selection) -> Self {
        let source = match selection {
            Selection::Ids(ids) => Source::Given(Some(ids)),
            Selection::Matching(filter) => Source::Scanned { filter, walk: None },
        };
        Ids {
            source,
            missing: Vec::new(),
        }
    }

    /// The next ids; empty when done.
    pub(super) async fn next(&mut self, dlq: &mut Dlq) -> Result<Vec<String>, DlqError> {
        match &mut self.source {
            Source::Given(ids) => {
                let Some(ids) = ids.take() else {
                    return Ok(Vec::new());
                };
                let mut present = Vec::with_capacity(ids.len());
                for id in ids {
                    match dlq.get(id).await? {
                        Some(_) => present.push(id.clone()),
                        None => self.missing.push(id.clone()),
                    }
                }
                Ok(present)
            }
            Source::Scanned { filter, walk } => {
                if walk.is_none() {
                    let from = Walk::from_since(filter.since_ms);
                    *walk = Some(Walk::start(from));
                }
                let walk = walk.as_mut().expect("set above");
                // A page may hold no match; go on until one does or the
                // walk ends.
                while !walk.over() {
                    let (summaries, _) = walk.next(dlq, PAGE_BUDGET).await?;
                    let mut ids = Vec::new();
                    for summary in summaries {
                        let selected = match filter.decides(&summary) {
                            Some(selected) => selected,
                            // A big letter whose ends do not say: read it
                            // whole, alone.
                            None => dlq
                                .get(&summary.id)
                                .await?
                                .is_some_and(|letter| filter.matches(&letter)),
                        };
                        if selected {
                            ids.push(summary.id);
                        }
                    }
                    if !ids.is_empty() {
                        return Ok(ids);
                    }
                }
                Ok(Vec::new())
            }
        }
    }
}

/// A walk through a DLQ's summaries ([`scripts::peek`]), oldest first, up
/// to the entry that was last when it started: what replay and purge
/// select by filter, and the console lists.
pub(super) struct Walk {
    /// Where the next page starts: an id, `(<id>` after it, or `-`.
    from: String,
    end: End,
}

/// Where a [`Walk`] ends.
pub(super) enum End {
    /// Not known before the first page: the DLQ's last entry then.
    Unknown,
    At(String),
    /// The walk is over.
    Over,
}

impl Walk {
    /// Where a walk from `since` (ms since the epoch) starts: ids carry
    /// their time.
    pub(super) fn from_since(since_ms: Option<u64>) -> String {
        since_ms.map_or_else(|| "-".to_string(), |ms| format!("{ms}-0"))
    }

    pub(super) fn start(from: String) -> Self {
        Walk {
            from,
            end: End::Unknown,
        }
    }

    pub(super) fn over(&self) -> bool {
        matches!(self.end, End::Over)
    }

    /// The next page, at most [`PAGE`] entries and about `budget` bytes
    /// read (at least one entry); with the bytes read. Empty when over.
    pub(super) async fn next(
        &mut self,
        dlq: &mut Dlq,
        budget: usize,
    ) -> Result<(Vec<Summary>, usize), DlqError> {
        let to = match &self.end {
            End::Over => return Ok((Vec::new(), 0)),
            End::Unknown => String::new(),
            End::At(end) => end.clone(),
        };
        let range = PeekRange {
            dlq: &dlq.queue.dlq,
            from: &self.from,
            to: &to,
            count: PAGE,
            budget: budget.max(1),
            head: HEAD_BYTES,
            tail: TAIL_BYTES,
        };
        let peeked = scripts::peek(&mut dlq.conn, &range)
            .await
            .or_unavailable(|| format!("cannot read {}", dlq.queue.dlq))?;
        self.end = match (peeked.last.clone(), peeked.entries.last()) {
            (Some(end), Some(last)) => {
                self.from = format!("({}", last.id);
                let done = last.id == end || (peeked.entries.len() < PAGE && !peeked.budget_spent);
                if done {
                    End::Over
                } else {
                    End::At(end)
                }
            }
            _ => End::Over,
        };
        let bytes = peeked
            .entries
            .iter()
            .map(|p| p.id.len() + p.head.len() + p.tail.len())
            .sum();
        Ok((
            peeked.entries.iter().map(Summary::from_peek).collect(),
            bytes,
        ))
    }
}

/// A walk through a DLQ's whole entries, oldest first, up to the entry
/// that was last when it started: `dlq list`'s, which an operator's
/// read-only Redis user runs (it may not run scripts).
pub(super) struct Scan {
    filter: Filter,
    /// Where the next page starts (exclusive after the first).
    from: String,
    /// The last entry when the scan started; `None`: the DLQ was empty.
    end: Option<String>,
}

impl Scan {
    pub(super) async fn start(dlq: &mut Dlq, filter: &Filter) -> Result<Self, DlqError> {
        let last: Vec<StreamEntry> = redis::cmd("XREVRANGE")
            .arg(&dlq.queue.dlq)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut dlq.conn)
            .await
            .or_unavailable(|| format!("cannot read {}", dlq.queue.dlq))?;
        // Ids carry their time: start at `since`.
        let from = filter
            .since_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{ms}-0"));
        Ok(Scan {
            filter: filter.clone(),
            from,
            end: last.into_iter().next().map(|e| e.id),
        })
    }

    /// The entries of the next page the filter selects (maybe none);
    /// `None` when the scan is over.
    pub(super) async fn next_page(
        &mut self,
        dlq: &mut Dlq,
    ) -> Result<Option<Vec<DeadLetter>>, DlqError> {
        let Some(end) = self.end.clone() else {
            return Ok(None);
        };
        let entries = dlq.range(&self.from, &end, PAGE).await?;
        let Some(last) = entries.last() else {
            self.end = None;
            return Ok(None);
        };
        self.from = format!("({}", last.id);
        if entries.len() < PAGE || last.id == end {
            self.end = None;
        }
        Ok(Some(
            entries
                .iter()
                .map(DeadLetter::from_entry)
                .filter(|l| self.filter.matches(l))
                .collect(),
        ))
    }
}
