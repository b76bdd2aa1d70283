//! Minitransactions on named, bounded memory regions of the cluster (`docs/regions.md`):
//! the builder an application fills, and the typed outcome. Regions are created with
//! [`crate::Client::region_create`]; a [`Minitx`] then compares, reads and writes any of
//! them atomically ([`crate::Client::minitx`]), over the control channel (request and
//! answer: not the data path).

use thiserror::Error;
use tutti_wire::control::{
    validate_group_name, ItemKind, MinitxFailure, MinitxFrame, MinitxItem, MAX_BODY, MAX_MINITX_ITEMS,
    MAX_MINITX_REGIONS,
};

/// A minitransaction: if every compare matches, every write is applied and every read
/// returned, atomically; otherwise nothing is written. Reads see the state before the
/// writes. At most [`MAX_MINITX_ITEMS`] items over [`MAX_MINITX_REGIONS`] regions, in one
/// control message (about 4 KiB of data in all).
///
/// ```no_run
/// # use tutti_client::{Client, Minitx, MinitxError};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = Client::connect()?;
/// client.region_create("counter", 8)?;
/// let mut value = 0u64;
/// loop {
///     let cas = Minitx::new()
///         .compare("counter", 0, &value.to_le_bytes())
///         .write("counter", 0, &(value + 1).to_le_bytes());
///     match client.minitx(&cas) {
///         Ok(_) => break,
///         // Someone else moved it: the failed compare says to what.
///         Err(MinitxError::Conflict { failed, .. }) => {
///             value = u64::from_le_bytes(failed[0].1.as_slice().try_into()?)
///         }
///         Err(e) => return Err(e.into()),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Minitx {
    regions: Vec<String>,
    items: Vec<(ItemKind, u8, u32, u32, Vec<u8>)>,
}

impl Minitx {
    pub fn new() -> Minitx {
        Minitx::default()
    }

    fn region(&mut self, name: &str) -> u8 {
        match self.regions.iter().position(|r| r == name) {
            Some(i) => i as u8,
            None => {
                self.regions.push(name.to_string());
                // Over MAX_MINITX_REGIONS is refused by `Client::minitx` before sending.
                (self.regions.len() - 1).min(usize::from(u8::MAX)) as u8
            }
        }
    }

    /// Requires the bytes at `offset` of region `region` to equal `expected`.
    pub fn compare(mut self, region: &str, offset: u32, expected: &[u8]) -> Minitx {
        let r = self.region(region);
        self.items.push((
            ItemKind::Compare,
            r,
            offset,
            expected.len() as u32,
            expected.to_vec(),
        ));
        self
    }

    /// Returns `len` bytes at `offset` of region `region`.
    pub fn read(mut self, region: &str, offset: u32, len: u32) -> Minitx {
        let r = self.region(region);
        self.items.push((ItemKind::Read, r, offset, len, Vec::new()));
        self
    }

    /// Stores `bytes` at `offset` of region `region`.
    pub fn write(mut self, region: &str, offset: u32, bytes: &[u8]) -> Minitx {
        let r = self.region(region);
        self.items
            .push((ItemKind::Write, r, offset, bytes.len() as u32, bytes.to_vec()));
        self
    }

    /// The control frame, or why it cannot be sent.
    pub(crate) fn frame(&self) -> Result<MinitxFrame<'_>, MinitxError> {
        for r in &self.regions {
            validate_group_name(r).map_err(|_| MinitxError::BadName(r.clone()))?;
        }
        if self.items.is_empty()
            || self.items.len() > MAX_MINITX_ITEMS
            || self.regions.len() > MAX_MINITX_REGIONS
            || self
                .items
                .iter()
                .any(|(k, _, _, _, d)| *k != ItemKind::Read && d.is_empty())
        {
            return Err(MinitxError::TooLarge);
        }
        let frame = MinitxFrame {
            regions: self.regions.iter().map(String::as_str).collect(),
            items: self
                .items
                .iter()
                .map(|(kind, region, offset, len, data)| MinitxItem {
                    kind: *kind,
                    region: *region,
                    offset: *offset,
                    len: *len,
                    data,
                })
                .collect(),
        };
        if frame.body_len() > MAX_BODY {
            return Err(MinitxError::TooLarge);
        }
        Ok(frame)
    }

    pub(crate) fn region_name(&self, index: u8) -> String {
        self.regions.get(usize::from(index)).cloned().unwrap_or_default()
    }
}

/// A committed minitransaction: its read items, in the order they were added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinitxOutcome {
    pub reads: Vec<Vec<u8>>,
}

/// Why a region operation did not succeed. Every error but `Unavailable` (and `Client`)
/// means nothing was written.
#[derive(Debug, Error)]
pub enum MinitxError {
    /// Compares failed: `failed` holds (index among the compare items, current bytes);
    /// `reads` the read items as they were (`None` where unknown).
    #[error("compare failed: {} item(s) differ", failed.len())]
    Conflict {
        failed: Vec<(usize, Vec<u8>)>,
        reads: Vec<Option<Vec<u8>>>,
    },
    #[error("region {region:?} does not exist (create it first: tutti region create)")]
    RegionMissing { region: String },
    #[error("region {region:?} exists with size {size}")]
    SizeMismatch { region: String, size: u32 },
    #[error("an item reaches past the end of region {region:?}")]
    OutOfBounds { region: String },
    /// Too many items, regions or bytes for one minitransaction, a region over the
    /// daemon's largest size (or of size 0), or an empty compare/write.
    #[error("too large: items, regions, bytes or region size over the limit")]
    TooLarge,
    #[error("no space left for a new region on the cluster's region memory node")]
    NoSpace,
    #[error("this daemon is not in a majority view of the cluster (or not in a cluster view yet)")]
    NotInMajority,
    #[error("busy: too many region operations in flight; retry")]
    Busy,
    /// No answer in time: the outcome is NOT known (read the data to learn it).
    #[error("region memory node unavailable: outcome unknown")]
    Unavailable,
    #[error("tuttid runs without a cluster: regions need one (cluster.seeds in its config)")]
    NoCluster,
    #[error("region name {0:?} must be 1 to 255 bytes of UTF-8")]
    BadName(String),
    #[error(transparent)]
    Client(#[from] crate::Error),
}

impl MinitxError {
    pub(crate) fn from_failure(f: MinitxFailure<'_>, name: impl Fn(u8) -> String) -> MinitxError {
        match f {
            MinitxFailure::Conflict { failed, reads } => MinitxError::Conflict {
                failed: failed
                    .into_iter()
                    .map(|(i, b)| (usize::from(i), b.to_vec()))
                    .collect(),
                reads: reads.into_iter().map(|r| r.map(<[u8]>::to_vec)).collect(),
            },
            MinitxFailure::RegionMissing { region } => MinitxError::RegionMissing { region: name(region) },
            MinitxFailure::SizeMismatch { region, size } => MinitxError::SizeMismatch {
                region: name(region),
                size,
            },
            MinitxFailure::OutOfBounds { region } => MinitxError::OutOfBounds { region: name(region) },
            MinitxFailure::TooLarge => MinitxError::TooLarge,
            MinitxFailure::NoSpace => MinitxError::NoSpace,
            MinitxFailure::NotInMajority => MinitxError::NotInMajority,
            MinitxFailure::Busy => MinitxError::Busy,
            MinitxFailure::Unavailable => MinitxError::Unavailable,
            MinitxFailure::NoCluster => MinitxError::NoCluster,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_names_each_region_once_and_checks_limits() {
        let m = Minitx::new()
            .compare("a", 0, b"x")
            .read("b", 4, 2)
            .write("a", 1, b"yz");
        let f = m.frame().unwrap();
        assert_eq!(f.regions, vec!["a", "b"]);
        assert_eq!(f.items.len(), 3);
        assert_eq!((f.items[1].region, f.items[1].len), (1, 2));
        assert!(matches!(Minitx::new().frame(), Err(MinitxError::TooLarge)));
        let mut many = Minitx::new();
        for i in 0..=MAX_MINITX_ITEMS as u32 {
            many = many.read("a", i, 1);
        }
        assert!(matches!(many.frame(), Err(MinitxError::TooLarge)));
        let big = Minitx::new().write("a", 0, &vec![1; MAX_BODY]);
        assert!(matches!(big.frame(), Err(MinitxError::TooLarge)));
        let mut regions = Minitx::new();
        for i in 0..=MAX_MINITX_REGIONS {
            regions = regions.read(&format!("r{i}"), 0, 1);
        }
        assert!(matches!(regions.frame(), Err(MinitxError::TooLarge)));
        assert!(matches!(
            Minitx::new().read("", 0, 1).frame(),
            Err(MinitxError::BadName(_))
        ));
        assert!(matches!(
            Minitx::new().write("a", 0, b"").frame(),
            Err(MinitxError::TooLarge)
        ));
    }
}
