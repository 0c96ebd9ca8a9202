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
//! Before a stream's first sender report the arrival time stands in; when the report
//! comes, the mapping moves to it gradually ([`SLEW`]) instead of jumping.
//! Pure logic: times passed in.

use std::time::{Duration, Instant, SystemTime};

/// Every wallclock is this much before the moment it stands for, so jitter cannot put
/// it in the future of the send time (str0m then reports RTP time 0). The same for
/// every stream, so invisible to A/V sync.
pub const MARGIN: Duration = Duration::from_millis(100);

/// How long the move from the arrival-time mapping to the sender-report one takes.
pub const SLEW: Duration = Duration::from_secs(2);

/// A larger correction is a new clock, not drift: it is applied at once.
const MAX_SLEW_CORRECTION: Duration = Duration::from_secs(5);

/// Sender-report times further than this from the publisher's first one are taken
/// to be nonsense (any sender can send any report) and ignored.
const MAX_CLOCK_SPAN: Duration = Duration::from_secs(24 * 3600);

/// One publisher's clock: where its NTP time stood when its first report arrived.
#[derive(Debug, Default, Clone, Copy)]
pub struct PublisherClock {
    anchor: Option<(Instant, SystemTime)>,
}

/// One incoming stream's mapping from RTP time to the publisher's NTP time.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamClock {
    /// The latest sender report: its NTP time, its RTP time.
    report: Option<(SystemTime, u32)>,
    /// A wallclock was given from the arrival time before the first report.
    used_arrival: bool,
    /// The move from the arrival mapping: when it began, by how much (nanoseconds,
    /// the arrival mapping minus the report mapping).
    correction: Option<(Instant, i64)>,
}

impl StreamClock {
    /// Takes the stream's latest sender report (`None` until there is one).
    pub fn observe(&mut self, ntp: SystemTime, rtp_time: u32) {
        self.report = Some((ntp, rtp_time));
    }

    /// The server instant at which the packet with RTP `timestamp` was captured, by
    /// the publisher's reports, minus [`MARGIN`]; from `arrival` until there is a report.
    pub fn wallclock(
        &mut self,
        publisher: &mut PublisherClock,
        timestamp: u32,
        clock_rate: u32,
        arrival: Instant,
    ) -> Instant {
        let by_arrival = arrival.checked_sub(MARGIN).unwrap_or(arrival);
        let Some(by_report) = self.by_report(publisher, timestamp, clock_rate, arrival) else {
            self.used_arrival = true;
            return by_arrival;
        };
        if self.used_arrival && self.correction.is_none() {
            let correction = signed_nanos(by_arrival, by_report);
            if correction.unsigned_abs() <= MAX_SLEW_CORRECTION.as_nanos() as u64 {
                self.correction = Some((arrival, correction));
            } else {
                self.correction = Some((arrival, 0));
            }
        }
        match self.correction {
            Some((start, correction)) if correction != 0 => {
                let elapsed = arrival.saturating_duration_since(start);
                if elapsed >= SLEW {
                    self.correction = Some((start, 0));
                    return by_report;
                }
                let left = 1.0 - elapsed.as_secs_f64() / SLEW.as_secs_f64();
                shift(by_report, (correction as f64 * left) as i64)
            }
            _ => by_report,
        }
    }

    fn by_report(
        &self,
        publisher: &mut PublisherClock,
        timestamp: u32,
        clock_rate: u32,
        arrival: Instant,
    ) -> Option<Instant> {
        let (ntp, rtp_time) = self.report?;
        // RTP time wraps: the signed distance to the report's is what counts.
        let ticks = i64::from(timestamp.wrapping_sub(rtp_time) as i32);
        let since_report = ticks * 1_000_000_000 / i64::from(clock_rate.max(1));
        let (anchor_at, anchor_ntp) = *publisher.anchor.get_or_insert((arrival, ntp));
        let report_from_anchor = system_nanos(ntp, anchor_ntp)?;
        let captured = shift(anchor_at, report_from_anchor.checked_add(since_report)?);
        Some(captured.checked_sub(MARGIN).unwrap_or(captured))
    }
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

    #[test]
    fn reports_carry_each_streams_capture_time_onto_one_clock() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let ntp0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut publisher = PublisherClock::default();
        let (mut audio, mut video) = (StreamClock::default(), StreamClock::default());
        // Audio RTP 1000 was captured at ntp0; video RTP 5000 at ntp0 - 200 ms.
        audio.observe(ntp0, 1000);
        video.observe(ntp0 - Duration::from_millis(200), 5000);
        let a = audio.wallclock(&mut publisher, 1000 + 4800, AUDIO, t0); // +100 ms
        let v = video.wallclock(
            &mut publisher,
            5000 + 9000,
            VIDEO,
            t0 + Duration::from_millis(50),
        ); // +100 ms
           // Both 100 ms after their report's instant: 200 ms apart, as the reports say.
        assert!((millis(a, v) - 200.0).abs() < 0.01, "{}", millis(a, v));
        // The first report anchors the publisher at its arrival, minus the margin.
        assert!((millis(a, t0) - (100.0 - MARGIN.as_millis() as f64)).abs() < 0.01);
    }

    #[test]
    fn before_a_report_the_arrival_stands_in_then_the_mapping_slews_to_the_report() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let ntp0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut publisher = PublisherClock::default();
        let (mut audio, mut video) = (StreamClock::default(), StreamClock::default());
        // Audio's report anchors the publisher: ntp0 is t0 here.
        audio.observe(ntp0, 0);
        audio.wallclock(&mut publisher, 0, AUDIO, t0);
        // Video has no report yet: its arrival stands in.
        let w = video.wallclock(&mut publisher, 0, VIDEO, t0);
        assert_eq!(w, t0 - MARGIN);
        // Its report: RTP 3000 was captured 300 ms before ntp0; it arrives 33 ms after t0.
        let at = t0 + Duration::from_millis(33);
        video.observe(ntp0 - Duration::from_millis(300), 3000);
        let first = video.wallclock(&mut publisher, 3000, VIDEO, at);
        assert_eq!(first, at - MARGIN, "no jump when the report arrives");
        // Halfway through the slew, half the 333 ms correction is left.
        let half = at + SLEW / 2;
        let ticks = 3000 + (SLEW / 2).as_millis() as u32 * 90;
        let mid = video.wallclock(&mut publisher, ticks, VIDEO, half);
        let by_report = t0 + SLEW / 2 - Duration::from_millis(300) - MARGIN;
        assert!(
            (millis(mid, by_report) - 166.5).abs() < 1.0,
            "{}",
            millis(mid, by_report)
        );
        // After it, the report mapping alone.
        let done = at + SLEW;
        let ticks = 3000 + SLEW.as_millis() as u32 * 90;
        let end = video.wallclock(&mut publisher, ticks, VIDEO, done);
        let by_report = t0 + SLEW - Duration::from_millis(300) - MARGIN;
        assert!(
            millis(end, by_report).abs() < 0.1,
            "{}",
            millis(end, by_report)
        );
    }

    #[test]
    fn rtp_time_wraps_and_runs_backwards_from_the_report() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let ntp0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut publisher = PublisherClock::default();
        let mut audio = StreamClock::default();
        audio.observe(ntp0, u32::MAX - 479);
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
        first.observe(SystemTime::UNIX_EPOCH, 0);
        first.wallclock(&mut publisher, 0, VIDEO, t0);
        // A second stream claiming a time decades away from the first one's.
        let mut other = StreamClock::default();
        other.observe(
            SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000),
            0,
        );
        assert_eq!(other.wallclock(&mut publisher, 0, VIDEO, t0), t0 - MARGIN);
        // Extreme RTP distances and a zero clock rate stay in range.
        for timestamp in [0, 1, i32::MAX as u32, i32::MIN as u32, u32::MAX] {
            for rate in [0, 1, VIDEO] {
                let _ = first.wallclock(&mut publisher, timestamp, rate, t0);
            }
        }
    }
}
