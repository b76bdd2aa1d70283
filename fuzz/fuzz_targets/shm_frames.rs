//! Fuzz the shared-memory ring readers: a publish-ring consumer and a delivery-log reader
//! over regions whose header, indices and data come from the input. They must return
//! errors, never panic, whatever a peer wrote.
//!
//! Input: byte 0 selects the capacity (bit 0: 4 KiB or 8 KiB), whether the header is kept
//! valid (bit 1), and whether the garbage is written before or after attaching (bit 2; the
//! latter reaches the frame parsers more often). Then 32 header bytes (used if bit 1 is
//! clear), 384 bytes of index blocks (offsets 128..512), and the data area.

#![no_main]

use std::alloc::{alloc_zeroed, dealloc, Layout};

use libfuzzer_sys::fuzz_target;
use tutti_wire::shm::{
    DeliveryLog, LayoutError, LogReader, PublishConsumer, PublishRing, DATA_OFFSET, REGION_ALIGN,
};

/// A zeroed, page-aligned buffer standing in for a mapping.
struct Region {
    ptr: *mut u8,
    layout: Layout,
}

impl Region {
    fn new(len: usize) -> Region {
        let layout = Layout::from_size_align(len, REGION_ALIGN).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Region { ptr, layout }
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    /// Copies the input's header, index and data bytes over the region.
    fn scribble(&mut self, input: &Input<'_>) {
        // SAFETY: we own the buffer; no reference into it is alive (ring objects hold raw
        // pointers only).
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len()) };
        if !input.keep_header {
            bytes[..input.header.len()].copy_from_slice(input.header);
        }
        bytes[128..128 + input.indices.len()].copy_from_slice(input.indices);
        let data = &input.data[..input.data.len().min(bytes.len() - DATA_OFFSET)];
        bytes[DATA_OFFSET..DATA_OFFSET + data.len()].copy_from_slice(data);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

struct Input<'a> {
    capacity: usize,
    keep_header: bool,
    after_attach: bool,
    header: &'a [u8],
    indices: &'a [u8],
    data: &'a [u8],
}

fn split(data: &[u8]) -> Option<Input<'_>> {
    let (&flags, rest) = data.split_first()?;
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (a, b) = rest.split_at(n.min(rest.len()));
        *rest = b;
        a
    }
    let mut rest = rest;
    let header = take(&mut rest, 32);
    let indices = take(&mut rest, 384);
    Some(Input {
        capacity: 4096 << (flags & 1),
        keep_header: flags & 2 != 0,
        after_attach: flags & 4 != 0,
        header,
        indices,
        data: rest,
    })
}

fn publish(input: &Input<'_>) -> Result<(), LayoutError> {
    let mut region = Region::new(PublishRing::required_len(input.capacity));
    // SAFETY: a fresh zeroed page-aligned buffer of the required length, outliving the
    // consumer below.
    unsafe { PublishRing::init(region.ptr, region.len(), input.capacity)? };
    if !input.after_attach {
        region.scribble(input);
    }
    // SAFETY: as above.
    let mut consumer = unsafe { PublishConsumer::attach(region.ptr, region.len())? };
    if input.after_attach {
        region.scribble(input);
    }
    let mut total = 0usize;
    for limit in [3, usize::MAX, 1] {
        let _ = consumer.has_pending();
        if consumer
            .poll(limit, |group, payload| total += payload.len() + group as usize)
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

fn log(input: &Input<'_>) -> Result<(), LayoutError> {
    let mut region = Region::new(DeliveryLog::required_len(input.capacity));
    // SAFETY: as in `publish`.
    unsafe { DeliveryLog::init(region.ptr, region.len(), input.capacity)? };
    if !input.after_attach {
        region.scribble(input);
    }
    // SAFETY: as above.
    let mut reader = unsafe { LogReader::attach(region.ptr, region.len())? };
    if input.after_attach {
        region.scribble(input);
    }
    let mut total = 0usize;
    for limit in [2, 64, 1] {
        let _ = reader.has_data();
        if reader
            .poll(limit, |event| total += format!("{event:?}").len())
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = split(data) else { return };
    let _ = publish(&input);
    let _ = log(&input);
});
