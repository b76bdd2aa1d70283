//! Test helper: a zeroed, page-aligned heap region standing in for a mapping.

use std::alloc::{alloc_zeroed, dealloc, Layout};

use super::layout::REGION_ALIGN;

pub(crate) struct AlignedRegion {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedRegion {
    pub(crate) fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), REGION_ALIGN).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation of {len} bytes failed");
        AlignedRegion { ptr, layout }
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    /// The raw bytes, for tests that corrupt a region (no ring object may be in use).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: we own the allocation; `&mut self` excludes other borrows.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}
