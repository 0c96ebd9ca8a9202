//! The per-packet forwarding path: one publisher packet written to every
//! subscriber's server-side [`Peer`] and drained to encrypted datagrams, the way
//! the shard does it (`fan_out_local` writes, `drain_queue` drains, `run_timers`
//! services a peer whose str0m timeout is due and it is drained again).
//!
//! Viewers are real str0m clients connected in memory (ICE + DTLS, no sockets) on
//! a simulated clock that advances 1 ms per publisher packet. Between chunks of
//! packets, outside the measurement, both sides' timers run and STUN/RTCP is
//! exchanged so the sessions stay alive; the media itself is never delivered.
//!
//! `cargo bench --bench forward -- --warm-up-time 1 --measurement-time 3`

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use str0m::net::Transmit;
use str0m::{IceConnectionState, Input};

use support::{Certs, Clock, Publisher, Subscriber, PACKET_INTERVAL};
use switchboard::peer::{PeerEvent, WriteOutcome};
use switchboard::router::sources::RoomSources;
use switchboard::router::{MediaPacket, RoomId};

const SUBSCRIBERS: [u16; 3] = [1, 10, 100];
/// Packets written per subscriber before one drain in the batch group.
const BATCH: usize = 5;
/// Publisher packets between two (unmeasured) keep-alive rounds: 20 simulated ms.
const CHUNK: u64 = 20;

/// Everything a benchmark needs, set up once, outside the measurement.
struct Bench {
    clock: Clock,
    subs: Vec<Subscriber>,
    publisher: Publisher,
    events: Vec<PeerEvent>,
    packets: Vec<MediaPacket>,
    media_out: u64,
}

impl Bench {
    fn new(n: u16, certs: &Certs, simulcast: bool) -> Self {
        let room: RoomId = "bench".into();
        let mut clock = Clock::new();
        let subs = support::connected_subscribers(n, &room, certs, &mut clock);
        let mut publisher = Publisher::new(&room, &subs[0].peer);
        if simulcast {
            publisher = publisher.simulcast();
        }
        // The shard gives each viewer's slots to the room's tracks before the
        // first packet: here, its one video slot to the publisher's track.
        let mut sources = RoomSources::default();
        let sample = publisher.next(clock.now);
        sources.publisher_joined(sample.publisher);
        let _ = sources.observe(
            sample.track,
            sample.publisher,
            &sample.participant,
            sample.kind,
            None,
            sample.arrival,
        );
        publisher = Publisher::new(&room, &subs[0].peer);
        if simulcast {
            publisher = publisher.simulcast();
        }
        let mut subs = subs;
        for sub in &mut subs {
            sub.peer.assign_slots(&sources, false);
        }
        let mut bench = Bench {
            clock,
            subs,
            publisher,
            events: Vec::new(),
            packets: Vec::new(),
            media_out: 0,
        };
        // The keyframe that starts every forwarder, then a few packets to warm up.
        bench.run_chunk(CHUNK, 1);
        bench
    }

    /// Writes `packets` publisher packets to every subscriber, `batch` at a time
    /// per subscriber before its drain, and returns the time that took. Then, not
    /// measured: the sessions are kept alive and every packet is checked to have
    /// left as one SRTP datagram per subscriber.
    fn run_chunk(&mut self, packets: u64, batch: usize) -> Duration {
        self.packets.clear();
        for _ in 0..packets * batch as u64 {
            let now = self.clock.advance(PACKET_INTERVAL);
            self.packets.push(self.publisher.next(now));
        }
        self.media_out = 0;

        let start = Instant::now();
        for group in self.packets.chunks(batch) {
            let now = group[group.len() - 1].arrival;
            for sub in &mut self.subs {
                for packet in group {
                    let outcome = sub.peer.write(packet);
                    debug_assert_eq!(outcome, WriteOutcome::Written);
                    black_box(outcome);
                }
                self.media_out += drain(sub, now, &mut self.events);
            }
        }
        let elapsed = start.elapsed();

        let expected = self.packets.len() as u64 * self.subs.len() as u64;
        assert_eq!(
            self.media_out, expected,
            "every packet must leave as one SRTP datagram per subscriber"
        );
        let now = self.clock.now;
        for sub in &mut self.subs {
            sub.service(now, &mut self.events);
            assert!(
                sub.peer.rtc.is_alive()
                    && matches!(
                        sub.peer.ice_state,
                        IceConnectionState::Connected | IceConnectionState::Completed
                    ),
                "a session dropped during the benchmark: {:?}",
                sub.peer.ice_state
            );
        }
        elapsed
    }

    fn run(&mut self, iters: u64, batch: usize) -> Duration {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let chunk = CHUNK.min(iters - done);
            total += self.run_chunk(chunk, batch);
            done += chunk;
        }
        total
    }
}

/// What the shard does for one queued viewer: drain it; if str0m then wants its
/// timeout serviced (it does after new media: that is when its pacer takes the
/// packets), handle the timeout and drain again. Returns the SRTP datagrams sent;
/// STUN/RTCP is kept for the client.
fn drain(sub: &mut Subscriber, now: Instant, events: &mut Vec<PeerEvent>) -> u64 {
    let mut media = 0;
    let to_client = &mut sub.to_client;
    let mut sink = |t: Transmit| {
        if support::is_rtp(&t.contents) {
            media += 1;
            black_box(t);
        } else {
            to_client.push(t);
        }
    };
    sub.peer.drain(&mut sink, events);
    if sub.peer.next_timeout.is_some_and(|at| at <= now) {
        sub.peer.handle_input(Input::Timeout(now));
        sub.peer.drain(&mut sink, events);
    }
    events.clear();
    media
}

fn group(c: &mut Criterion, certs: &Certs, name: &str, batch: usize, simulcast: bool) {
    let mut group = c.benchmark_group(name);
    for n in SUBSCRIBERS {
        let mut bench = Bench::new(n, certs, simulcast);
        group.throughput(Throughput::Elements(u64::from(n) * batch as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| bench.run(iters, batch))
        });
    }
    group.finish();
}

fn forward(c: &mut Criterion) {
    let certs = Certs::new();
    group(c, &certs, "forward", 1, false);
    group(c, &certs, "forward_batch5", BATCH, false);
    // The same packets from the best of three simulcast layers: each viewer's
    // layer choice runs on every packet.
    group(c, &certs, "forward_simulcast", 1, true);
}

criterion_group!(benches, forward);
criterion_main!(benches);
