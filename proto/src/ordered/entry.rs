//! The fixed-size records of the memory-node layout: list entries and progress slots.
//! Decoders are strict (bytes come from the network via the memory node): a record that
//! does not decode is `None`, and the caller counts it.

use super::{ENTRY_BYTES, PROGRESS_BYTES};
use crate::NodeId;

/// Why a member left the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoveReason {
    /// It asked to leave.
    Left = 1,
    /// The failure detector suspected it.
    Suspected = 2,
    /// It fell further behind the tail than `lag_budget`.
    Lagging = 3,
    /// `evs` groups: the view put it on another side of a partition.
    Partitioned = 4,
}

/// `evs` groups: where a member comes from when it joins a new list epoch. `epoch` is the
/// list it was last installed in; `delivered` and `held` are its next position to deliver
/// and the end of what it holds there, frozen when it left that list (positions of an
/// `evs` list stay below 2^32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JoinFrom {
    pub epoch: EpochId,
    pub delivered: u32,
    pub held: u32,
}

/// `evs` groups: a list epoch, named by the side that opened it (the side's number from the
/// view, unique per side, and its lowest node). The group's first list is `EpochId::FIRST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EpochId {
    pub number: u32,
    pub founder: NodeId,
}

impl EpochId {
    pub const FIRST: EpochId = EpochId {
        number: 0,
        founder: 0,
    };

    /// The epoch as one number, `number << 32 | founder` (a `Committed` push's `epoch`
    /// field; the seed of its memory node's hosts).
    pub fn to_u64(self) -> u64 {
        u64::from(self.number) << 32 | u64::from(self.founder)
    }

    /// The inverse of [`EpochId::to_u64`].
    pub fn from_u64(v: u64) -> EpochId {
        EpochId {
            number: (v >> 32) as u32,
            founder: v as u32,
        }
    }
}

/// What a list entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Messages `first_seq .. first_seq + count` of `node` in its membership starting at
    /// list position `epoch`; `safe` asks delivery only once every member holds them.
    Data {
        epoch: u64,
        first_seq: u64,
        count: u16,
        safe: bool,
    },
    /// `node` joins the view here (or joins again: its old membership ends).
    Join,
    /// `node` leaves the view here.
    Remove(RemoveReason),
    /// `evs` groups: `node` joins this list epoch, coming from `from` (`None`: a new member,
    /// or one that was installed in no list).
    EvsJoin { from: Option<JoinFrom> },
    /// `evs` groups: the founder closes the gather; the members whose `EvsJoin` precedes it
    /// form the list's first configuration.
    Install,
    /// `majority` groups: the group's state is lost (every member that held it is
    /// suspected or out of the cluster view) and it starts again here from an empty state:
    /// the view becomes `node` alone (every other member leaves, removed), and `node`
    /// installs the empty state at this position. Appended by a joiner whose install timed
    /// out (docs/ordered.md, "Restart").
    Restart,
    /// `evs` groups under agreed delivery: a member leaves the list for a new list epoch;
    /// no member delivers the first `Seal` or anything after it, so every member that
    /// reads up to it holds all that any member delivered in the list (docs/ordered.md,
    /// "Partition policy `evs`").
    Seal,
}

/// One list entry: its position (so a reader tells it from a reclaimed slot), the node it
/// concerns and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    pub pos: u64,
    pub node: NodeId,
    pub kind: EntryKind,
}

const KIND_DATA: u8 = 1;
const KIND_JOIN: u8 = 2;
const KIND_REMOVE: u8 = 3;
const KIND_EVS_JOIN: u8 = 4;
const KIND_INSTALL: u8 = 5;
const KIND_RESTART: u8 = 6;
const KIND_SEAL: u8 = 7;

impl Entry {
    pub fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut b = [0u8; ENTRY_BYTES];
        b[0..8].copy_from_slice(&self.pos.to_le_bytes());
        b[12..16].copy_from_slice(&self.node.to_le_bytes());
        match self.kind {
            EntryKind::Data {
                epoch,
                first_seq,
                count,
                safe,
            } => {
                b[8] = KIND_DATA;
                b[9] = u8::from(safe);
                b[10..12].copy_from_slice(&count.to_le_bytes());
                b[16..24].copy_from_slice(&epoch.to_le_bytes());
                b[24..32].copy_from_slice(&first_seq.to_le_bytes());
            }
            EntryKind::Join => b[8] = KIND_JOIN,
            EntryKind::Remove(reason) => {
                b[8] = KIND_REMOVE;
                b[9] = reason as u8;
            }
            EntryKind::EvsJoin { from } => {
                b[8] = KIND_EVS_JOIN;
                if let Some(f) = from {
                    b[9] = 1;
                    b[16..20].copy_from_slice(&f.epoch.number.to_le_bytes());
                    b[20..24].copy_from_slice(&f.epoch.founder.to_le_bytes());
                    b[24..28].copy_from_slice(&f.delivered.to_le_bytes());
                    b[28..32].copy_from_slice(&f.held.to_le_bytes());
                }
            }
            EntryKind::Install => b[8] = KIND_INSTALL,
            EntryKind::Restart => b[8] = KIND_RESTART,
            EntryKind::Seal => b[8] = KIND_SEAL,
        }
        b
    }

    /// Decodes an entry; `None` for anything but a well-formed one (an empty slot too).
    pub fn decode(b: &[u8]) -> Option<Entry> {
        let b: &[u8; ENTRY_BYTES] = b.get(..ENTRY_BYTES)?.try_into().ok()?;
        let pos = u64_at(b, 0)?;
        let node = u32::from_le_bytes(b.get(12..16)?.try_into().ok()?);
        let kind = match b[8] {
            KIND_DATA => {
                let count = u16::from_le_bytes(b.get(10..12)?.try_into().ok()?);
                let first_seq = u64_at(b, 24)?;
                // The seq range must not wrap: readers compute `first_seq + count`.
                if count == 0 || b[9] > 1 || first_seq.checked_add(u64::from(count)).is_none() {
                    return None;
                }
                EntryKind::Data {
                    epoch: u64_at(b, 16)?,
                    first_seq,
                    count,
                    safe: b[9] == 1,
                }
            }
            KIND_JOIN => EntryKind::Join,
            KIND_REMOVE => EntryKind::Remove(match b[9] {
                1 => RemoveReason::Left,
                2 => RemoveReason::Suspected,
                3 => RemoveReason::Lagging,
                4 => RemoveReason::Partitioned,
                _ => return None,
            }),
            KIND_EVS_JOIN => EntryKind::EvsJoin {
                from: match b[9] {
                    0 => None,
                    1 => {
                        let delivered = u32_at(b, 24)?;
                        let held = u32_at(b, 28)?;
                        if held < delivered {
                            return None;
                        }
                        Some(JoinFrom {
                            epoch: EpochId {
                                number: u32_at(b, 16)?,
                                founder: u32_at(b, 20)?,
                            },
                            delivered,
                            held,
                        })
                    }
                    _ => return None,
                },
            },
            KIND_INSTALL => EntryKind::Install,
            KIND_RESTART => EntryKind::Restart,
            KIND_SEAL => EntryKind::Seal,
            _ => return None,
        };
        Some(Entry { pos, node, kind })
    }
}

/// A member's published progress: every entry below `learned` is read (its slot may be
/// reclaimed); every payload below `held` is held (`safe` entries below it may be
/// delivered). `node` and `join_pos` name the membership that wrote it: a slot written by
/// an older occupant is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressSlot {
    pub node: NodeId,
    pub installed: bool,
    pub join_pos: u64,
    pub learned: u64,
    pub held: u64,
}

impl ProgressSlot {
    pub fn encode(&self) -> [u8; PROGRESS_BYTES] {
        let mut b = [0u8; PROGRESS_BYTES];
        b[0..4].copy_from_slice(&self.node.to_le_bytes());
        b[4] = u8::from(self.installed);
        b[8..16].copy_from_slice(&self.join_pos.to_le_bytes());
        b[16..24].copy_from_slice(&self.learned.to_le_bytes());
        b[24..32].copy_from_slice(&self.held.to_le_bytes());
        b
    }

    /// In the request slot, `join_pos` holds the tail the requester lost at.
    pub(crate) fn pos_asked(&self) -> u64 {
        self.join_pos
    }

    pub fn decode(b: &[u8]) -> Option<ProgressSlot> {
        let b = b.get(..PROGRESS_BYTES)?;
        Some(ProgressSlot {
            node: u32::from_le_bytes(b.get(0..4)?.try_into().ok()?),
            installed: *b.get(4)? == 1,
            join_pos: u64_at(b, 8)?,
            learned: u64_at(b, 16)?,
            held: u64_at(b, 24)?,
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        for kind in [
            EntryKind::Data {
                epoch: 9,
                first_seq: 1 << 40,
                count: 7,
                safe: true,
            },
            EntryKind::Join,
            EntryKind::Remove(RemoveReason::Lagging),
            EntryKind::Remove(RemoveReason::Partitioned),
            EntryKind::EvsJoin { from: None },
            EntryKind::EvsJoin {
                from: Some(JoinFrom {
                    epoch: EpochId {
                        number: 7,
                        founder: 2,
                    },
                    delivered: 40,
                    held: 44,
                }),
            },
            EntryKind::Install,
            EntryKind::Restart,
            EntryKind::Seal,
        ] {
            let e = Entry {
                pos: 77,
                node: 5,
                kind,
            };
            assert_eq!(Entry::decode(&e.encode()), Some(e));
        }
        assert_eq!(Entry::decode(&[0u8; ENTRY_BYTES]), None);
        assert_eq!(Entry::decode(&[1u8; 5]), None);
        let mut bad = Entry {
            pos: 1,
            node: 1,
            kind: EntryKind::Remove(RemoveReason::Left),
        }
        .encode();
        bad[9] = 200;
        assert_eq!(Entry::decode(&bad), None);
        // A join whose held is below its delivered is refused (a reader would trust it).
        let mut bad = Entry {
            pos: 1,
            node: 1,
            kind: EntryKind::EvsJoin {
                from: Some(JoinFrom {
                    epoch: EpochId::FIRST,
                    delivered: 5,
                    held: 5,
                }),
            },
        }
        .encode();
        bad[28] = 4;
        assert_eq!(Entry::decode(&bad), None);
        let wrapping = Entry {
            pos: 1,
            node: 1,
            kind: EntryKind::Data {
                epoch: 0,
                first_seq: u64::MAX - 1,
                count: 5,
                safe: false,
            },
        };
        assert_eq!(Entry::decode(&wrapping.encode()), None);
        let p = ProgressSlot {
            node: 3,
            installed: true,
            join_pos: 4,
            learned: 5,
            held: 6,
        };
        assert_eq!(ProgressSlot::decode(&p.encode()), Some(p));
    }
}
