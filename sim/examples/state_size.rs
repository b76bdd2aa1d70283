//! Bytes of protocol state in one node that knows `n` peers and holds a full message
//! window, built synthetically (a 10,000-node cluster cannot bootstrap in the simulator
//! yet: its view would not fit one datagram). Run:
//! `cargo run --release -p tutti-sim --example state_size -- 1000 10000`.

use tutti_proto::{Node, Settings, MILLIS};
use tutti_wire::packet::{DataHeader, Encoder, HeartbeatEntry, HeartbeatHeader, MAX_DATAGRAM};

const GROUP: u64 = tutti_sim::sim::GROUP;

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let senders = 10u32;
    let per_sender = 100u64; // 1,000 messages of 64 B held, as in the 1,000-node run
    for n in if sizes.is_empty() {
        vec![1000, 10000]
    } else {
        sizes
    } {
        let mut node = Node::new(1, 1, &[0], Settings::default(), 0, 1);
        node.join(0, GROUP);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        // Liveness table: n peers, learned from node 0 in chunks.
        let peers: Vec<u32> = (0..n).filter(|p| *p != 1).collect();
        for chunk in peers.chunks(3000) {
            let entries: Vec<HeartbeatEntry> = chunk
                .iter()
                .map(|&p| HeartbeatEntry {
                    node: p,
                    incarnation: 1,
                    heartbeat: 5,
                    flags: 0,
                })
                .collect();
            let mut enc = Encoder::new(&mut buf, 0, 1).expect("buffer");
            let h = HeartbeatHeader {
                view_counter: 0,
                view_coordinator: 0,
                view_coordinator_incarnation: 1,
                max_counter: 0,
            };
            enc.push_heartbeats(&h, &entries).expect("fits");
            let len = enc.len();
            node.handle_packet(MILLIS, 0, &buf[..len]);
        }
        // Message window: `senders` x `per_sender` messages of 64 B, all held.
        for s in 0..senders {
            let sender = 100 + s;
            for seq in 0..per_sender {
                let mut enc = Encoder::new(&mut buf, sender, 1).expect("buffer");
                let h = DataHeader {
                    group: GROUP,
                    seq,
                    sender,
                    stream: 1,
                    retained: seq as u32,
                    session: 0,
                    frag_index: 0,
                    frag_count: 1,
                    reserved: 0,
                };
                enc.push_data(&h, true, &[0u8; 64]).expect("fits");
                let len = enc.len();
                node.handle_packet(2 * MILLIS, sender, &buf[..len]);
            }
        }
        while node.poll_event().is_some() {}
        while node.poll_transmit().is_some() {}
        // The view (members + one group) would add about 8 + 4 bytes per member in the
        // view, 16 per member in its index maps.
        let view_estimate = n as usize * (8 + 4 + 16 + 16);
        println!(
            "{n} nodes: {} bytes of node state (table + {} held messages) + ~{} bytes for a view of all of them = ~{} bytes",
            node.state_bytes(),
            u64::from(senders) * per_sender,
            view_estimate,
            node.state_bytes() + view_estimate
        );
    }
}
