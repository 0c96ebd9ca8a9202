//! Lip sync: each publisher's own capture clock, learnt from its RTCP sender reports
//! and mapped onto the server's `Instant`s.
//!
//! str0m builds a viewer's sender reports from the `wallclock` of the last packet
//! written to that stream (RTP time `t` is taken to be captured at `wallclock`). Given
//! the arrival time, every stream maps to the moment it reached the server, so an
//! encoder delay between audio and video (x264 look-ahead, OBS) is never compensated.
//! Given the [`StreamClock::wallclock`] here instead, the viewer's reports carry the
//! publisher's own NTP↔RTP mapping, shifted by one constant per publisher (its clock is
//! not ours), which a receiver's A/V sync does not see: it compares streams.
//!
//! Reports are not trusted blindly: any sender can send any report, and real ones
//! are wrong (GStreamer 1.22's webrtcbin states an RTP time that runs at twice its
//! clock rate, seconds ahead of the packets it sends). A stream's report is used only
//! once the next one confirms it: RTP time and NTP time advanced alike, and both agree
//! with the packets and their arrival. A report that contradicts its stream makes the
//! whole publisher fall back to arrival times for good, since a mix of the two
//! mappings is no sync at all.
//!
//! Until a stream's reports are confirmed the arrival time stands in; a move from one
//! mapping to the other is made gradually ([`SLEW`]) instead of in a jump.
//! Pure logic: times passed in.

use std::time::{Duration, Instant, SystemTime};

/// Every wallclock is this much before the moment it stands for, so jitter cannot put
/// it in the future of the send time (str0m then reports RTP time 0). The same for
/// every stream, so invisible to A/V sync.
pub const MARGIN: Duration = Duration::from_millis(100);

/// How long a move from one mapping to the other takes.
pub const SLEW: Duration = Duration::from_secs(2);

/// A larger correction is a new clock, not drift: it is applied at once. Also the
/// furthest a report mapping may put a packet from its arrival before that packet
/// is taken to be on another timeline (a timestamp jump the reports have not caught
/// up with).
const MAX_SLEW_CORRECTION: Duration = Duration::from_secs(5);

/// Sender-report times further than this from the publisher's first one are taken
/// to be nonsense and ignored.
const MAX_CLOCK_SPAN: Duration = Duration::from_secs(24 * 3600);

/// How far a report's RTP time may run ahead of the packet that brings it: the
/// report says "now" at the sender, the packet was captured an encoder delay before.
const MAX_REPORT_AHEAD: Duration = Duration::from_secs(3);

/// How far it may trail that packet: str0m hands a report over with the stream's
/// next packet, which may have been captured well after the report was sent (a low
/// frame rate, a paused track, audio's five-second report interval).
const MAX_REPORT_BEHIND: Duration = Duration::from_secs(5);

/// Between two reports, RTP time must advance like NTP time, within this plus
/// [`RATE_TOLERANCE`] of the interval.
const REPORT_TOLERANCE: Duration = Duration::from_millis(50);

/// Clock drift and measurement error allowed, as a share of the interval.
const RATE_TOLERANCE: f64 = 0.02;

/// One publisher's clock: where its NTP time stood when its first report was used,
/// and whether its reports are refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct PublisherClock {
    anchor: Option<(Instant, SystemTime)>,
    refused: bool,
}

impl PublisherClock {
    /// A stream's reports contradicted themselves or their packets.
    pub fn is_refused(&self) -> bool {
        self.refused
    }
}

/// A sender report: its NTP time and its RTP time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    ntp: SystemTime,
    rtp_time: u32,
}

/// Which mapping a stream's wallclocks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    Arrival,
    Report,
}

/// One incoming stream's mapping from RTP time to the publisher's NTP time.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamClock {
    /// The newest report received, confirmed or not.
    latest: Option<Report>,
    /// The newest report confirmed by the one before it: the mapping in use.
    confirmed: Option<Report>,
    /// The mapping of the last wallclock given.
    mapping: Option<Mapping>,
    /// The last wallclock given: RTP time, wallclock, clock rate.
    last: Option<(u32, Instant, u32)>,
    /// The move from the previous mapping: when it began, by how much (nanoseconds,
    /// the previous mapping minus the current one).
    correction: Option<(Instant, i64)>,
}

impl StreamClock {
    /// Takes the stream's latest sender report, as seen with the packet `timestamp`
    /// that arrived at `arrival` (str0m hands it over with every packet; a report
    /// already seen is ignored). Checks it against the packet and the report before
    /// it; a contradiction refuses the publisher's reports. The publisher's first
    /// confirmed report anchors its clock to ours.
    pub fn observe(
        &mut self,
        publisher: &mut PublisherClock,
        ntp: SystemTime,
        rtp_time: u32,
        timestamp: u32,
        clock_rate: u32,
        arrival: Instant,
    ) {
        if self
            .latest
            .is_some_and(|r| r.ntp == ntp && r.rtp_time == rtp_time)
        {
            return;
        }
        let report = Report { ntp, rtp_time };
        let rate = f64::from(clock_rate.max(1));
        let ahead = f64::from(rtp_time.wrapping_sub(timestamp) as i32) / rate;
        let fits_packet =
            ahead <= MAX_REPORT_AHEAD.as_secs_f64() && -ahead <= MAX_REPORT_BEHIND.as_secs_f64();
        let fits_previous = self
            .latest
            .is_none_or(|previous| advanced_alike(&previous, &report, rate));
        if (!fits_packet || !fits_previous) && !publisher.refused {
            tracing::debug!(
                ahead_secs = ahead,
                fits_previous,
                "sender report contradicts its stream: the publisher's reports are not used"
            );
            publisher.refused = true;
        }
        if self.latest.is_some() && fits_packet && fits_previous {
            self.confirmed = Some(report);
            publisher.anchor.get_or_insert((arrival, ntp));
        }
        self.latest = Some(report);
    }

    /// The server instant at which the packet with RTP `timestamp` was captured, by
    /// the publisher's reports, minus [`MARGIN`]; from `arrival` until there are
    /// confirmed reports or when they are refused.
    pub fn wallclock(
        &mut self,
        publisher: &mut PublisherClock,
        timestamp: u32,
        clock_rate: u32,
        arrival: Instant,
    ) -> Instant {
        let by_arrival = arrival.checked_sub(MARGIN).unwrap_or(arrival);
        let mut by_report = self.by_report(publisher, timestamp, clock_rate);
        if by_report.is_some_and(|w| {
            signed_nanos(by_arrival, w).unsigned_abs() > MAX_SLEW_CORRECTION.as_nanos() as u64
        }) {
            // The packets left the reports' timeline (or never were on it).
            tracing::debug!("sender reports put a packet far from its arrival: not used");
            publisher.refused = true;
            by_report = None;
        }
        let (mapping, target) = match by_report {
            Some(w) => (Mapping::Report, w),
            None => (Mapping::Arrival, by_arrival),
        };
        if self.mapping.is_some_and(|m| m != mapping) {
            // Carry on from the line the last wallclocks were on, and move off it
            // gradually.
            if let Some((last_ts, last_wallclock, last_rate)) = self.last {
                let ticks = i64::from(timestamp.wrapping_sub(last_ts) as i32);
                let since = ticks * 1_000_000_000 / i64::from(last_rate.max(1));
                let previous_line = shift(last_wallclock, since);
                let correction = signed_nanos(previous_line, target);
                let correction =
                    if correction.unsigned_abs() <= MAX_SLEW_CORRECTION.as_nanos() as u64 {
                        correction
                    } else {
                        0
                    };
                self.correction = Some((arrival, correction));
            }
        }
        self.mapping = Some(mapping);
        let wallclock = match self.correction {
            Some((start, correction)) => {
                let elapsed = arrival.saturating_duration_since(start);
                if elapsed >= SLEW || correction == 0 {
                    self.correction = None;
                    target
                } else {
                    let left = 1.0 - elapsed.as_secs_f64() / SLEW.as_secs_f64();
                    shift(target, (correction as f64 * left) as i64)
                }
            }
            None => target,
        };
        self.last = Some((timestamp, wallclock, clock_rate));
        wallclock
    }

    fn by_report(
        &self,
        publisher: &PublisherClock,
        timestamp: u32,
        clock_rate: u32,
    ) -> Option<Instant> {
        if publisher.refused {
            return None;
        }
        let report = self.confirmed?;
        let (anchor_at, anchor_ntp) = publisher.anchor?;
        // RTP time wraps: the signed distance to the report's is what counts.
        let ticks = i64::from(timestamp.wrapping_sub(report.rtp_time) as i32);
        let since_report = ticks * 1_000_000_000 / i64::from(clock_rate.max(1));
        let report_from_anchor = system_nanos(report.ntp, anchor_ntp)?;
        let captured = shift(anchor_at, report_from_anchor.checked_add(since_report)?);
        Some(captured.checked_sub(MARGIN).unwrap_or(captured))
    }
}

/// Between two reports of one stream, RTP time advanced like NTP time.
fn advanced_alike(previous: &Report, report: &Report, rate: f64) -> bool {
    let Some(ntp) = system_nanos(report.ntp, previous.ntp) else {
        return false;
    };
    let ntp = ntp as f64 / 1e9;
    let rtp = f64::from(report.rtp_time.wrapping_sub(previous.rtp_time) as i32) / rate;
    let allowed = REPORT_TOLERANCE.as_secs_f64() + RATE_TOLERANCE * ntp;
    ntp > 0.0 && (rtp - ntp).abs() <= allowed
}
/// `a - b` in nanoseconds, `None` beyond [`MAX_CLOCK_SPAN`].
fn system_nanos(a: SystemTime, b: SystemTime) -> Option<i64> {
    let (magnitude, negative) = match a.duration_since(b) {
        Ok(d) => (d, false),
        Err(e) => (e.duration(), true),
    };
    if magnitude > MAX_CLOCK_SPAN {
        return None;
    }
    let nanos = magnitude.as_nanos() as i64;
    Some(if negative { -nanos } else { nanos })
}

/// `a - b` in nanoseconds (saturating at about 292 years either way).
fn signed_nanos(a: Instant, b: Instant) -> i64 {
    match a.checked_duration_since(b) {
        Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        None => -i64::try_from(b.duration_since(a).as_nanos()).unwrap_or(i64::MAX),
    }
}

/// `at` moved by `nanos`, or `at` itself where that leaves `Instant`'s range.
fn shift(at: Instant, nanos: i64) -> Instant {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    let moved = if nanos >= 0 {
        at.checked_add(magnitude)
    } else {
        at.checked_sub(magnitude)
    };
    moved.unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIDEO: u32 = 90_000;
    const AUDIO: u32 = 48_000;

    fn millis(a: Instant, b: Instant) -> f64 {
        signed_nanos(a, b) as f64 / 1e6
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A publisher whose reports state capture times honestly, with an encoder that
    /// delays video by `video_lag`: at server time `t0 + s` (and NTP `ntp0 + s`) the
    /// audio packet sent has RTP time `s * 48k`, the video packet `(s - lag) * 90k`.
    struct Honest {
        t0: Instant,
        ntp0: SystemTime,
        video_lag: Duration,
    }

    impl Honest {
        fn new(video_lag: Duration) -> Self {
            Honest {
                t0: Instant::now() + Duration::from_secs(10),
                ntp0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                video_lag,
            }
        }
        fn audio_rtp(&self, at: Duration) -> u32 {
            (at.as_secs_f64() * f64::from(AUDIO)) as u32
        }
        fn video_rtp(&self, at: Duration) -> u32 {
            ((at.as_secs_f64() - self.video_lag.as_secs_f64()) * f64::from(VIDEO)) as i64 as u32
        }
        /// Reports at `at` for both streams.
        fn report(
            &self,
            publisher: &mut PublisherClock,
            audio: &mut StreamClock,
            video: &mut StreamClock,
            at: Duration,
        ) {
            let ntp = self.ntp0 + at;
            audio.observe(
                publisher,
                ntp,
                self.audio_rtp(at),
                self.audio_rtp(at),
                AUDIO,
                self.t0 + at,
            );
            // The report states the capture clock; the packet sent now was captured
            // `video_lag` before.
            let video_now = (at.as_secs_f64() * f64::from(VIDEO)) as u32;
            let video_packet = self.video_rtp(at);
            video.observe(publisher, ntp, video_now, video_packet, VIDEO, self.t0 + at);
        }
    }

    #[test]
    fn confirmed_reports_carry_each_streams_capture_time_onto_one_clock() {
        let p = Honest::new(ms(200));
        let mut publisher = PublisherClock::default();
        let (mut audio, mut video) = (StreamClock::default(), StreamClock::default());
        p.report(&mut publisher, &mut audio, &mut video, ms(0));
        p.report(&mut publisher, &mut audio, &mut video, ms(1000));
        // Video sent at the same moment as audio, captured 200 ms earlier.
        let at = ms(1100);
        let a = audio.wallclock(&mut publisher, p.audio_rtp(at), AUDIO, p.t0 + at);
        let v = video.wallclock(&mut publisher, p.video_rtp(at), VIDEO, p.t0 + at);
        assert!((millis(a, v) - 200.0).abs() < 0.1, "{}", millis(a, v));
        // The publisher is anchored where its first confirmed report arrived.
        assert!((millis(a, p.t0 + at) + MARGIN.as_millis() as f64).abs() < 0.1);
        assert!(!publisher.is_refused());
    }

    #[test]
    fn arrival_stands_in_until_a_report_is_confirmed_then_the_mapping_slews_to_it() {
        let p = Honest::new(ms(300));
        let mut publisher = PublisherClock::default();
        let (mut audio, mut video) = (StreamClock::default(), StreamClock::default());
        p.report(&mut publisher, &mut audio, &mut video, ms(0));
        // One report is not enough: arrival times, the video lag unseen.
        let at = ms(500);
        let w = video.wallclock(&mut publisher, p.video_rtp(at), VIDEO, p.t0 + at);
        assert_eq!(w, p.t0 + at - MARGIN);
        // The second confirms it: no jump when the mapping changes...
        p.report(&mut publisher, &mut audio, &mut video, ms(1000));
        let at = ms(1000);
        let first = video.wallclock(&mut publisher, p.video_rtp(at), VIDEO, p.t0 + at);
        assert!(
            millis(first, p.t0 + at - MARGIN).abs() < 0.1,
            "{}",
            millis(first, p.t0 + at - MARGIN)
        );
        // ...halfway through the slew, half the 300 ms correction is left...
        let half = at + SLEW / 2;
        let mid = video.wallclock(&mut publisher, p.video_rtp(half), VIDEO, p.t0 + half);
        let by_report = p.t0 + half - ms(300) - MARGIN;
        assert!(
            (millis(mid, by_report) - 150.0).abs() < 1.0,
            "{}",
            millis(mid, by_report)
        );
        // ...and after it, the report mapping alone.
        let done = at + SLEW;
        let end = video.wallclock(&mut publisher, p.video_rtp(done), VIDEO, p.t0 + done);
        let by_report = p.t0 + done - ms(300) - MARGIN;
        assert!(
            millis(end, by_report).abs() < 0.1,
            "{}",
            millis(end, by_report)
        );
    }

    /// GStreamer 1.22's webrtcbin, as measured against this server: every report's
    /// RTP time runs at twice the clock rate, so it is soon seconds ahead of the
    /// packets it comes with.
    #[test]
    fn reports_whose_rtp_time_runs_at_twice_the_rate_are_refused_without_a_jump() {
        let p = Honest::new(ms(0));
        let mut publisher = PublisherClock::default();
        let mut video = StreamClock::default();
        let mut previous: Option<Instant> = None;
        for step in 0..200u64 {
            let at = ms(step * 33);
            if step % 30 == 0 {
                let doubled = (at.as_secs_f64() * 2.0 * f64::from(VIDEO)) as u32;
                video.observe(
                    &mut publisher,
                    p.ntp0 + at,
                    doubled + 60_000,
                    p.video_rtp(at),
                    VIDEO,
                    p.t0 + at,
                );
            }
            let w = video.wallclock(&mut publisher, p.video_rtp(at), VIDEO, p.t0 + at);
            assert_eq!(w, p.t0 + at - MARGIN, "arrival times throughout");
            if let Some(before) = previous {
                assert!((millis(w, before) - 33.0).abs() < 0.1);
            }
            previous = Some(w);
        }
        assert!(publisher.is_refused());
    }

    #[test]
    fn a_contradiction_after_confirmed_reports_slews_every_stream_back_to_arrival() {
        let p = Honest::new(ms(200));
        let mut publisher = PublisherClock::default();
        let (mut audio, mut video) = (StreamClock::default(), StreamClock::default());
        p.report(&mut publisher, &mut audio, &mut video, ms(0));
        p.report(&mut publisher, &mut audio, &mut video, ms(1000));
        let at = ms(4000);
        let before = video.wallclock(&mut publisher, p.video_rtp(at), VIDEO, p.t0 + at);
        assert!((millis(p.t0 + at - MARGIN, before) - 200.0).abs() < 0.5);
        // Audio's next report says its RTP time jumped 4 s ahead of its NTP time.
        let bad = p.audio_rtp(ms(5000)) + 4 * AUDIO;
        audio.observe(
            &mut publisher,
            p.ntp0 + ms(5000),
            bad,
            p.audio_rtp(ms(5000)),
            AUDIO,
            p.t0 + ms(5000),
        );
        assert!(publisher.is_refused());
        // Video follows arrival again, starting from where it was, in SLEW.
        let at = ms(5000);
        let w = video.wallclock(&mut publisher, p.video_rtp(at), VIDEO, p.t0 + at);
        assert!(
            (millis(w, before) - 1000.0).abs() < 0.5,
            "continuous: {}",
            millis(w, before)
        );
        let done = at + SLEW;
        let w = video.wallclock(&mut publisher, p.video_rtp(done), VIDEO, p.t0 + done);
        assert_eq!(w, p.t0 + done - MARGIN);
    }

    #[test]
    fn a_report_far_ahead_of_its_packets_is_refused() {
        let p = Honest::new(ms(0));
        let mut publisher = PublisherClock::default();
        let mut audio = StreamClock::default();
        let at = ms(0);
        let ahead = p.audio_rtp(at) + 4 * AUDIO;
        audio.observe(&mut publisher, p.ntp0, ahead, p.audio_rtp(at), AUDIO, p.t0);
        assert!(publisher.is_refused());
    }

    #[test]
    fn rtp_time_wraps_and_runs_backwards_from_the_report() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let ntp0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut publisher = PublisherClock::default();
        let mut audio = StreamClock::default();
        let base = u32::MAX - 479 - AUDIO;
        audio.observe(&mut publisher, ntp0, base, base, AUDIO, t0);
        audio.observe(
            &mut publisher,
            ntp0 + ms(1000),
            base.wrapping_add(AUDIO),
            base.wrapping_add(AUDIO),
            AUDIO,
            t0,
        );
        let at_report = audio.wallclock(&mut publisher, u32::MAX - 479, AUDIO, t0);
        let after_wrap = audio.wallclock(&mut publisher, 480, AUDIO, t0);
        assert!((millis(after_wrap, at_report) - 20.0).abs() < 0.01);
        let before = audio.wallclock(&mut publisher, u32::MAX - 479 - 960, AUDIO, t0);
        assert!((millis(before, at_report) + 20.0).abs() < 0.01);
    }

    #[test]
    fn nonsense_reports_fall_back_to_arrival_and_never_panic() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut publisher = PublisherClock::default();
        let mut first = StreamClock::default();
        for ntp_secs in [0, 1, 2_000_000_000, 1, u32::MAX as u64] {
            for rtp in [0, 1, i32::MAX as u32, u32::MAX] {
                first.observe(
                    &mut publisher,
                    SystemTime::UNIX_EPOCH + Duration::from_secs(ntp_secs),
                    rtp,
                    0,
                    VIDEO,
                    t0,
                );
            }
        }
        for timestamp in [0, 1, i32::MAX as u32, i32::MIN as u32, u32::MAX] {
            for rate in [0, 1, VIDEO] {
                let w = first.wallclock(&mut publisher, timestamp, rate, t0);
                assert!(millis(w, t0).abs() <= MAX_SLEW_CORRECTION.as_millis() as f64 + 100.0);
            }
        }
    }
}
