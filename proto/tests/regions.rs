//! Application regions (`tutti_proto::regions`) through `Node`'s API, three nodes over a
//! seeded network with loss, delay and duplication, and a crash of the region memory
//! node's primary mid-run. Checked against a sequential model: every transaction also
//! moves a sequence counter (compare v, write v + 1) and writes its tag at slot v of a log
//! region, so the log names the serial order, including transactions whose outcome the
//! client never learned; replaying the log on a model must give every committed
//! transaction's reads and the final memory, and no conflicted transaction may be in it.
//!
//! `REGION_SEEDS=N` runs N seeds (default 12).

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::collections::{BTreeMap, HashMap};
use tutti_proto::regions::{region_id, RegionError, RegionEvent, RegionOp, RegionTxn};
use tutti_proto::{Node, NodeId, Settings, Time, MILLIS};

const STEP: Time = 200_000;
const DATA: &str = "data";
const DATA2: &str = "data2";
const SEQ: &str = "seq";
const LOG: &str = "log";
const DATA_LEN: usize = 48;
const MAX_TXNS: u32 = 300;

fn settings() -> Settings {
    Settings {
        gossip_period: 10 * MILLIS,
        suspect_timeout: 200 * MILLIS,
        ..Settings::default()
    }
}

struct Net {
    rng: Xoshiro256PlusPlus,
    loss: f64,
    /// (deliver at, from, to, bytes)
    flight: Vec<(Time, NodeId, NodeId, Vec<u8>)>,
}

struct Cluster {
    nodes: Vec<Option<Node>>,
    net: Net,
    now: Time,
    events: Vec<Vec<RegionEvent>>,
}

impl Cluster {
    fn new(seed: u64, loss: f64) -> Cluster {
        let nodes = (1..=3)
            .map(|id| {
                Some(Node::new(
                    id,
                    1,
                    &[1, 2, 3],
                    settings(),
                    0,
                    seed * 10 + u64::from(id),
                ))
            })
            .collect();
        Cluster {
            nodes,
            net: Net {
                rng: Xoshiro256PlusPlus::seed_from_u64(seed),
                loss,
                flight: Vec::new(),
            },
            now: 0,
            events: vec![Vec::new(), Vec::new(), Vec::new()],
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes[(id - 1) as usize].as_mut().expect("node alive")
    }

    fn step(&mut self) {
        let now = self.now;
        for n in self.nodes.iter_mut().flatten() {
            if n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now);
            }
        }
        loop {
            for n in self.nodes.iter_mut().flatten() {
                let from = n.id();
                while let Some(t) = n.poll_transmit() {
                    let r: f64 = self.net.rng.gen();
                    if r < self.net.loss {
                        continue;
                    }
                    let delay = self.net.rng.gen_range(0..1_000_000);
                    self.net
                        .flight
                        .push((now + delay, from, t.dest, t.payload.to_vec()));
                    if r > 1.0 - self.net.loss / 2.0 {
                        // Duplicated.
                        self.net
                            .flight
                            .push((now + 2 * delay, from, t.dest, t.payload.to_vec()));
                    }
                }
            }
            let due: Vec<_> = {
                let (due, later): (Vec<_>, Vec<_>) = self.net.flight.drain(..).partition(|f| f.0 <= now);
                self.net.flight = later;
                due
            };
            if due.is_empty() {
                break;
            }
            for (_, from, to, bytes) in due {
                if let Some(n) = self.nodes.get_mut((to - 1) as usize).and_then(|n| n.as_mut()) {
                    n.handle_packet(now, from, &bytes);
                }
            }
        }
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Some(n) = n {
                while let Some(e) = n.poll_region_event() {
                    self.events[i].push(e);
                }
            }
        }
        self.now += STEP;
    }

    fn run_for(&mut self, d: Time) {
        let until = self.now + d;
        while self.now < until {
            self.step();
        }
    }

    /// Runs until `op` of `node` finished; returns its result.
    fn wait(&mut self, node: NodeId, op: RegionOp) -> Result<Vec<Vec<u8>>, RegionError> {
        for _ in 0..100_000 {
            let ev = &mut self.events[(node - 1) as usize];
            if let Some(i) = ev.iter().position(|e| e.op == op) {
                return ev.remove(i).result;
            }
            self.step();
        }
        panic!("op {op} of node {node} never finished");
    }

    fn create(&mut self, node: NodeId, name: &str, size: u32) -> Result<Vec<Vec<u8>>, RegionError> {
        let now = self.now;
        let op = self.node(node).region_create(now, name, size)?;
        self.wait(node, op)
    }

    fn txn(&mut self, node: NodeId, txn: &RegionTxn) -> Result<Vec<Vec<u8>>, RegionError> {
        let now = self.now;
        let op = self.node(node).region_minitx(now, txn)?;
        self.wait(node, op)
    }
}

fn formed(seed: u64, loss: f64) -> Cluster {
    let mut c = Cluster::new(seed, loss);
    c.run_for(500 * MILLIS);
    for n in c.nodes.iter().flatten() {
        assert_eq!(n.view().members.len(), 3, "cluster formed");
    }
    c
}

#[test]
fn create_is_idempotent_and_errors_are_typed() {
    let mut c = formed(1, 0.0);
    assert_eq!(c.create(1, "a", 16), Ok(Vec::new()));
    // Idempotent, from any node; another size is refused.
    assert_eq!(c.create(2, "a", 16), Ok(Vec::new()));
    assert_eq!(
        c.create(3, "a", 32),
        Err(RegionError::SizeMismatch {
            region: region_id("a"),
            size: 16
        })
    );
    let a = region_id("a");
    let missing = region_id("nope");
    assert_eq!(
        c.txn(2, &RegionTxn::new().read(missing, 0, 1)),
        Err(RegionError::RegionMissing { region: missing })
    );
    assert_eq!(
        c.txn(2, &RegionTxn::new().read(a, 10, 7)),
        Err(RegionError::OutOfBounds { region: a })
    );
    assert_eq!(
        c.node(1).region_create(0, "big", 64 * 1024 + 1),
        Err(RegionError::TooLarge)
    );
    // A compare that fails writes nothing and says why.
    assert_eq!(
        c.txn(3, &RegionTxn::new().write(a, 0, b"hello").read(a, 0, 5)),
        Ok(vec![vec![0; 5]])
    );
    let r = c.txn(
        1,
        &RegionTxn::new()
            .compare(a, 0, b"HELLO")
            .write(a, 0, b"xxxxx")
            .read(a, 5, 2),
    );
    assert_eq!(
        r,
        Err(RegionError::Conflict {
            failed: vec![(0, b"hello".to_vec())],
            reads: vec![Some(vec![0, 0])]
        })
    );
    assert_eq!(
        c.txn(2, &RegionTxn::new().read(a, 0, 5)),
        Ok(vec![b"hello".to_vec()])
    );
    // Concurrent creators of one name from every node agree on one region.
    let now = c.now;
    let ops: Vec<(NodeId, RegionOp)> = (1..=3)
        .map(|n| (n, c.node(n).region_create(now, "race", 8).unwrap()))
        .collect();
    for (n, op) in ops {
        assert_eq!(c.wait(n, op), Ok(Vec::new()));
    }
    let counters = c.node(1).region_counters();
    assert!(counters.created >= 1 && counters.conflicts == 1, "{counters:?}");
}

/// What one submitted transaction was: its tag, the sequence value it compared, its items.
#[derive(Clone)]
struct Planned {
    seq: u32,
    writes: Vec<(usize, u32, Vec<u8>)>,
    reads: Vec<(usize, u32, u32)>,
}

fn run_seed(seed: u64, crash: bool) {
    let mut c = formed(seed, 0.03);
    let names = [DATA, DATA2];
    for name in names {
        assert_eq!(c.create(1, name, DATA_LEN as u32), Ok(Vec::new()), "seed {seed}");
    }
    assert_eq!(c.create(2, SEQ, 8), Ok(Vec::new()));
    assert_eq!(c.create(3, LOG, 8 * MAX_TXNS), Ok(Vec::new()));
    let (primary, backup) = c.node(1).region_placement().expect("placed");
    let backup = backup.expect("a backup in a three-node view");
    let clients: Vec<NodeId> = (1..=3).filter(|&n| n != primary).collect();
    let ids = [region_id(DATA), region_id(DATA2)];
    let (seq_id, log_id) = (region_id(SEQ), region_id(LOG));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xabcdef);
    let mut planned: HashMap<u64, Planned> = HashMap::new();
    let mut committed: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut aborted: Vec<u64> = Vec::new();
    let mut in_flight: BTreeMap<(NodeId, RegionOp), u64> = BTreeMap::new();
    // Each client's idea of the sequence value.
    let mut guess: HashMap<NodeId, u32> = clients.iter().map(|&n| (n, 0)).collect();
    let mut next_tag = 1u64;
    let mut crashed = false;
    let mut unknown = 0;
    while next_tag <= 120 || !in_flight.is_empty() {
        if crash && !crashed && next_tag > 40 {
            c.nodes[(primary - 1) as usize] = None;
            crashed = true;
        }
        for &n in &clients {
            if next_tag > 120 || in_flight.keys().any(|(m, _)| *m == n) {
                continue;
            }
            let tag = next_tag;
            next_tag += 1;
            let seq = guess[&n];
            let mut p = Planned {
                seq,
                writes: Vec::new(),
                reads: Vec::new(),
            };
            let mut t = RegionTxn::new()
                .compare(seq_id, 0, &u64::from(seq).to_le_bytes())
                .write(seq_id, 0, &u64::from(seq + 1).to_le_bytes())
                .write(log_id, 8 * seq, &tag.to_le_bytes());
            for _ in 0..rng.gen_range(0..3) {
                let r = rng.gen_range(0..2usize);
                let len = rng.gen_range(1..9u32);
                let off = rng.gen_range(0..DATA_LEN as u32 - len);
                p.reads.push((r, off, len));
                t = t.read(ids[r], off, len);
            }
            for _ in 0..rng.gen_range(1..4) {
                let r = rng.gen_range(0..2usize);
                let len = rng.gen_range(1..9u32);
                let off = rng.gen_range(0..DATA_LEN as u32 - len);
                let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                t = t.write(ids[r], off, &bytes);
                p.writes.push((r, off, bytes));
            }
            let now = c.now;
            let op = c.node(n).region_minitx(now, &t).expect("admitted");
            planned.insert(tag, p);
            in_flight.insert((n, op), tag);
        }
        c.step();
        for &n in &clients {
            let evs = std::mem::take(&mut c.events[(n - 1) as usize]);
            for e in evs {
                let tag = in_flight.remove(&(n, e.op)).expect("an op we submitted");
                match e.result {
                    Ok(reads) => {
                        committed.insert(tag, reads);
                        *guess.get_mut(&n).unwrap() = planned[&tag].seq + 1;
                    }
                    Err(RegionError::Conflict { failed, .. }) => {
                        aborted.push(tag);
                        let (i, cur) = &failed[0];
                        assert_eq!(*i, 0, "only the sequence compare can fail");
                        let mut b = [0u8; 8];
                        b.copy_from_slice(cur);
                        *guess.get_mut(&n).unwrap() = u64::from_le_bytes(b) as u32;
                    }
                    Err(RegionError::Unavailable) | Err(RegionError::Busy) => unknown += 1,
                    Err(other) => panic!("seed {seed}: unexpected {other:?}"),
                }
            }
        }
        assert!(c.now < 120_000 * MILLIS, "seed {seed}: stuck");
    }
    // Read the order back and replay it.
    let reader = clients[0];
    let state = c
        .txn(
            reader,
            &RegionTxn::new()
                .read(seq_id, 0, 8)
                .read(log_id, 0, 8 * MAX_TXNS)
                .read(ids[0], 0, DATA_LEN as u32)
                .read(ids[1], 0, DATA_LEN as u32),
        )
        .unwrap_or_else(|e| panic!("seed {seed}: final read: {e:?}"));
    let n = u64::from_le_bytes(state[0].clone().try_into().unwrap()) as usize;
    let mut model = [vec![0u8; DATA_LEN], vec![0u8; DATA_LEN]];
    let mut seen = Vec::new();
    for v in 0..n {
        let tag = u64::from_le_bytes(state[1][8 * v..8 * v + 8].try_into().unwrap());
        let p = planned
            .get(&tag)
            .unwrap_or_else(|| panic!("seed {seed}: unknown tag {tag} at {v}"));
        assert_eq!(
            p.seq as usize, v,
            "seed {seed}: tag {tag} committed at its compared value"
        );
        let reads: Vec<Vec<u8>> = p
            .reads
            .iter()
            .map(|&(r, off, len)| model[r][off as usize..(off + len) as usize].to_vec())
            .collect();
        if let Some(got) = committed.get(&tag) {
            assert_eq!(
                got, &reads,
                "seed {seed}: reads of tag {tag} match the serial order"
            );
        }
        for (r, off, bytes) in &p.writes {
            model[*r][*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
        }
        seen.push(tag);
    }
    for tag in committed.keys() {
        assert!(seen.contains(tag), "seed {seed}: committed tag {tag} lost");
    }
    for tag in &aborted {
        assert!(
            !seen.contains(tag),
            "seed {seed}: conflicted tag {tag} was applied"
        );
    }
    assert_eq!(state[2], model[0], "seed {seed}: region data equals the model");
    assert_eq!(state[3], model[1], "seed {seed}: region data2 equals the model");
    assert!(
        committed.len() >= 20,
        "seed {seed}: progress ({} committed)",
        committed.len()
    );
    if crash {
        assert_eq!(
            c.node(backup).region_placement().map(|p| p.0),
            Some(backup),
            "seed {seed}: the backup took over"
        );
    }
    eprintln!(
        "seed {seed}: {} committed, {} conflicted, {unknown} unknown, order of {n}, primary {primary} crash {crash}",
        committed.len(),
        aborted.len()
    );
}

fn seeds() -> u64 {
    std::env::var("REGION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

#[test]
fn transactions_are_atomic_and_serializable_under_loss() {
    for seed in 0..seeds() {
        run_seed(seed, false);
    }
}

#[test]
fn committed_writes_survive_a_primary_crash() {
    for seed in 100..100 + seeds() {
        run_seed(seed, true);
    }
}
