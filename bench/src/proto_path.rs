//! `tutti-bench proto`: the CPU one message costs in the bimodal multicast protocol itself,
//! with no socket, no shared memory and no other thread. Two `tutti_proto::Node`s in this
//! thread form a view and join one group; the sender submits messages in batches and
//! hands every datagram `poll_transmit` gives to the receiver's `handle_packet_with` (and
//! the receiver's flow reports and gossip back); the receiver takes every delivery as the
//! daemon does, read in place through the sink, and every queued event.
//! Each node's work is timed on its own clock, so the figures are nanoseconds of one core
//! per message on each side: what the cluster bench's daemons spend in the protocol,
//! without the scheduling noise of four threads on two vCPUs.

use std::hint::black_box;
use std::time::Instant;
use tutti_proto::{Event, Node, Settings, Time, MILLIS};

/// The group the two nodes join.
const GROUP: u64 = 7;
/// Simulated time per submitted message (timers run as at ~10 M msg/s).
const NANOS_PER_MESSAGE: Time = 100;

/// One repetition's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProtoPath {
    pub size: usize,
    pub messages: u64,
    /// Sender's nanoseconds per message: submit, encode, timers, flow reports taken.
    pub sender_ns_per_msg: f64,
    /// Receiver's nanoseconds per message: decode, store, deliver, reports and gossip made.
    pub receiver_ns_per_msg: f64,
    /// Datagrams to the receiver, warm-up included (as `msgs_per_datagram`).
    pub datagrams: u64,
    pub msgs_per_datagram: f64,
    /// Submits refused by flow control (the burst ends there; the next one retries once
    /// the datagrams and the receiver's reports have moved).
    pub refused: u64,
}

/// A node's outgoing datagrams, copied out of `poll_transmit` (as the daemon copies them
/// into its send slots) into buffers reused from batch to batch.
struct Wire {
    bufs: Vec<Vec<u8>>,
    used: usize,
}

impl Wire {
    fn new() -> Self {
        Wire {
            bufs: Vec::new(),
            used: 0,
        }
    }

    fn take(&mut self, node: &mut Node) -> u64 {
        let mut n = 0;
        while let Some(t) = node.poll_transmit() {
            if self.used == self.bufs.len() {
                self.bufs.push(Vec::with_capacity(2048));
            }
            let b = &mut self.bufs[self.used];
            b.clear();
            b.extend_from_slice(t.payload);
            self.used += 1;
            n += 1;
        }
        n
    }

    /// Hands the datagrams to `to` as the daemon does (its deliveries read in place by the
    /// sink while no event waits); returns the messages delivered that way.
    fn hand(&mut self, now: Time, from: u32, to: &mut Node) -> u64 {
        let mut delivered = 0;
        for b in &self.bufs[..self.used] {
            to.handle_packet_with(now, from, b, &mut |d| {
                black_box(d.payload.len());
                delivered += 1;
            });
        }
        self.used = 0;
        delivered
    }
}

/// Takes every event of the receiver, giving delivered payloads back to its pool; returns
/// the messages delivered.
fn drain_events(node: &mut Node) -> Result<u64, String> {
    let mut delivered = 0;
    while let Some(e) = node.poll_event() {
        match e {
            Event::Deliver { payload, .. } => {
                black_box(payload.len());
                node.recycle(payload);
                delivered += 1;
            }
            Event::Lost { first, count, .. } => {
                return Err(format!("messages {first}..{} reported lost", first + count));
            }
            _ => {}
        }
    }
    Ok(delivered)
}

/// Runs `warmup` messages (not timed: retention fills to its budget, buffer pools fill, as
/// in a daemon that has been sending for a while), then `messages` timed messages of `size`
/// bytes from node 1 to node 0, `batch` per submit burst.
pub fn run(size: usize, warmup: u64, messages: u64, batch: usize) -> Result<ProtoPath, String> {
    let settings = Settings::default();
    let mut nodes: Vec<Node> = (0..2u32)
        .map(|i| {
            let mut node = Node::new(i, 1, &[0], settings.clone(), 0, u64::from(i) + 1);
            node.join(0, GROUP);
            node
        })
        .collect();
    let (mut to_receiver, mut to_sender) = (Wire::new(), Wire::new());
    // Form the view: 100 ms timer steps until both see the group with both members.
    let mut now: Time = 0;
    let formed = |n: &Node| n.view().group(GROUP).is_some_and(|m| m.len() == 2);
    while !(formed(&nodes[0]) && formed(&nodes[1])) {
        if now > 30_000 * MILLIS {
            return Err("the two nodes formed no view within 30 simulated seconds".into());
        }
        now += 100 * MILLIS;
        for n in nodes.iter_mut() {
            n.handle_timeout(now);
        }
        for _ in 0..4 {
            let (receiver, sender) = nodes.split_at_mut(1);
            to_receiver.take(&mut sender[0]);
            to_receiver.hand(now, 1, &mut receiver[0]);
            to_sender.take(&mut receiver[0]);
            to_sender.hand(now, 0, &mut sender[0]);
        }
        drain_events(&mut nodes[0])?;
    }
    let (receiver, sender) = nodes.split_at_mut(1);
    let (receiver, sender) = (&mut receiver[0], &mut sender[0]);
    let mut payload = vec![0x5au8; size.max(8)];
    let (mut sender_ns, mut receiver_ns) = (0u128, 0u128);
    let (mut sent, mut delivered, mut datagrams, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let mut next_timer = now + MILLIS;
    let total = warmup + messages;
    // Each side's time, and what it is summed into (nothing during the warm-up).
    let (mut discard_snd, mut discard_rcv) = (0u128, 0u128);
    while delivered < total {
        let (snd, rcv) = if delivered >= warmup {
            (&mut sender_ns, &mut receiver_ns)
        } else {
            (&mut discard_snd, &mut discard_rcv)
        };
        // Sender: a burst of submits, its datagrams out, its timers when due.
        let t = Instant::now();
        let burst = (total - sent).min(batch as u64);
        for _ in 0..burst {
            payload[..8].copy_from_slice(&sent.to_le_bytes());
            match sender.submit_with(now, GROUP, 1, &payload, |copy| {
                black_box(copy.len());
            }) {
                Ok(_) => sent += 1,
                Err(tutti_proto::SubmitError::Full) => {
                    refused += 1;
                    break;
                }
                Err(e) => return Err(format!("submit refused: {e}")),
            }
            now += NANOS_PER_MESSAGE;
        }
        if burst == 0 {
            now += MILLIS; // everything sent: let the timers repair what is missing
        }
        // The simulated clock moves only in the burst above: one decision for both sides.
        let timers_due = now >= next_timer;
        if timers_due {
            sender.handle_timeout(now);
        }
        datagrams += to_receiver.take(sender);
        *snd += t.elapsed().as_nanos();
        // Receiver: every datagram, every event, its reports back.
        let t = Instant::now();
        delivered += to_receiver.hand(now, 1, receiver);
        if timers_due {
            receiver.handle_timeout(now);
        }
        delivered += drain_events(receiver)?;
        to_sender.take(receiver);
        *rcv += t.elapsed().as_nanos();
        // Sender again: the reports.
        let t = Instant::now();
        to_sender.hand(now, 0, sender);
        datagrams += to_receiver.take(sender);
        *snd += t.elapsed().as_nanos();
        if timers_due {
            next_timer = now + MILLIS;
        }
        if now > 3_600_000 * MILLIS {
            return Err(format!("{delivered} of {total} delivered after a simulated hour"));
        }
    }
    Ok(ProtoPath {
        size,
        messages,
        sender_ns_per_msg: sender_ns as f64 / messages as f64,
        receiver_ns_per_msg: receiver_ns as f64 / messages as f64,
        datagrams,
        msgs_per_datagram: total as f64 / datagrams.max(1) as f64,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message arrives (a `Lost` or a stall is an error), in runs: 64-byte messages
    /// pack ~19 to a 1,472-byte datagram.
    #[test]
    fn every_message_is_delivered_in_packed_datagrams() {
        let r = run(64, 1_000, 20_000, 64).expect("the run completes");
        assert_eq!(r.messages, 20_000);
        assert!(r.msgs_per_datagram > 15.0, "{} per datagram", r.msgs_per_datagram);
        assert!(r.sender_ns_per_msg > 0.0 && r.receiver_ns_per_msg > 0.0);
    }
}
