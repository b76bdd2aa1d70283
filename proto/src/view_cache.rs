//! Interning of installed views across the nodes of one process (the simulator runs
//! thousands): nodes that install the same view share one allocation instead of holding
//! a decoded copy each. Optional; a daemon's single node has no use for it.

use crate::fxhash::FxMap;
use crate::multicast::GroupMembers;
use crate::{GroupId, GroupView, View, ViewId};
use std::sync::{Arc, Mutex, Weak};

/// Views held at most; beyond it entries whose view no node holds any more are dropped,
/// and if none is, the cache is cleared (interning is an optimisation, never required).
const MAX_CACHED_VIEWS: usize = 4096;

/// Views by (id, content hash), held weakly (a view no node holds is freed).
type Table = FxMap<(ViewId, u64), Weak<View>>;

/// Groups' member lists with their position index, by the view (id, content hash) and
/// group they belong to, held weakly.
type GroupTable = FxMap<(ViewId, u64, GroupId), Weak<GroupMembers>>;

/// A view's parts, encoded once (message bodies, see `tutti_wire::packet::view_part_body`):
/// a member serves them to every member that pulls the view, whole or the parts it lacks.
#[derive(Debug)]
pub struct EncodedView {
    pub id: ViewId,
    pub hash: u64,
    /// The part size limit the view was split with (`max_datagram` less the headers).
    pub max_body: usize,
    pub bodies: Vec<Vec<u8>>,
}

/// Encoded views by (id, content hash, part size limit), held weakly.
type EncodedTable = FxMap<(ViewId, u64, usize), Weak<EncodedView>>;

/// A shared table of views by (id, content hash). Clones share the table.
#[derive(Clone, Default)]
pub struct ViewCache {
    views: Arc<Mutex<Table>>,
    groups: Arc<Mutex<GroupTable>>,
    encoded: Arc<Mutex<EncodedTable>>,
}

impl ViewCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared copy of `view` (whose content hash is `hash`): an equal view already
    /// interned, or `view` itself, interned now.
    pub fn intern(&self, view: View, hash: u64) -> Arc<View> {
        let Ok(mut views) = self.views.lock() else {
            return Arc::new(view);
        };
        let key = (view.id, hash);
        if let Some(v) = views.get(&key).and_then(Weak::upgrade) {
            // Equal hashes of different content would be a collision: keep them apart.
            if *v == view {
                return v;
            }
            return Arc::new(view);
        }
        if views.len() >= MAX_CACHED_VIEWS {
            views.retain(|_, w| w.strong_count() > 0);
            if views.len() >= MAX_CACHED_VIEWS {
                views.clear();
            }
        }
        let v = Arc::new(view);
        views.insert(key, Arc::downgrade(&v));
        v
    }

    /// The shared member list (with its position index) of group `gv` of view `(id, hash)`:
    /// built by the first node that installs the view, shared by the others.
    pub fn group_members(&self, id: ViewId, hash: u64, gv: &GroupView) -> Arc<GroupMembers> {
        let build = || Arc::new(GroupMembers::new(&gv.members, &gv.streams));
        let Ok(mut groups) = self.groups.lock() else {
            return build();
        };
        let key = (id, hash, gv.id);
        if let Some(g) = groups.get(&key).and_then(Weak::upgrade) {
            if g.matches(&gv.members, &gv.streams) {
                return g;
            }
            return build();
        }
        if groups.len() >= MAX_CACHED_VIEWS {
            groups.retain(|_, w| w.strong_count() > 0);
            if groups.len() >= MAX_CACHED_VIEWS {
                groups.clear();
            }
        }
        let g = build();
        groups.insert(key, Arc::downgrade(&g));
        g
    }

    /// The encoded parts of view `view` (content hash `hash`) split within `max_body`:
    /// encoded by the first node that serves the view, shared by the others. `encode` is
    /// called only when no node holds them. Views with equal (id, hash) are taken as equal
    /// here (the node's installed view, which it checked when it installed it).
    pub fn encoded(
        &self,
        id: ViewId,
        hash: u64,
        max_body: usize,
        encode: impl FnOnce() -> Option<EncodedView>,
    ) -> Option<Arc<EncodedView>> {
        let Ok(mut table) = self.encoded.lock() else {
            return encode().map(Arc::new);
        };
        let key = (id, hash, max_body);
        if let Some(e) = table.get(&key).and_then(Weak::upgrade) {
            return Some(e);
        }
        if table.len() >= MAX_CACHED_VIEWS {
            table.retain(|_, w| w.strong_count() > 0);
            if table.len() >= MAX_CACHED_VIEWS {
                table.clear();
            }
        }
        let e = Arc::new(encode()?);
        table.insert(key, Arc::downgrade(&e));
        Some(e)
    }

    /// Views interned and still held by some node.
    pub fn len(&self) -> usize {
        self.views
            .lock()
            .map(|v| v.values().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Member;

    fn view(counter: u64, n: u32) -> View {
        View {
            id: ViewId {
                counter,
                coordinator: 0,
                coordinator_incarnation: 1,
            },
            members: (0..n).map(|node| Member { node, incarnation: 1 }).collect(),
            addrs: Vec::new(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn equal_views_share_one_allocation_and_different_ones_do_not() {
        let c = ViewCache::new();
        let a = c.intern(view(3, 10), view(3, 10).content_hash());
        let b = c.intern(view(3, 10), view(3, 10).content_hash());
        assert!(Arc::ptr_eq(&a, &b));
        let d = c.intern(view(3, 11), view(3, 11).content_hash());
        assert!(!Arc::ptr_eq(&a, &d));
        // A forged hash equal to another view's does not return the other view.
        let e = c.intern(view(3, 12), view(3, 10).content_hash());
        assert_eq!(e.members.len(), 12);
        drop((a, b, d, e));
        assert!(c.is_empty());
    }
}
