#!/usr/bin/python3
"""A WHIP publisher and a WHEP player on GStreamer's webrtcbin (Debian 12: GStreamer 1.22,
libnice ICE, OpenSSL DTLS with an RSA certificate), the client stack the test suite
checks Switchboard against.

Debian's own `whip-client` (simple-whip-client) aborts at start on Debian 12: it links
libsoup 2.4, and libnice pulls in libsoup 3 through gupnp-igd ("Using libsoup2 and
libsoup3 in the same process is not supported"). This client speaks HTTP with
Python's urllib instead, so it needs only Debian's packages:

    apt-get install python3-gi gir1.2-gst-plugins-bad-1.0 gstreamer1.0-nice \
        gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly \
        gstreamer1.0-libav

    webrtcbin_client.py publish http://127.0.0.1:8080/whip/ROOM --codec vp8 --seconds 60
    webrtcbin_client.py play    http://127.0.0.1:8080/whep/ROOM --seconds 60
    webrtcbin_client.py check   (are the GStreamer elements it needs installed?)

It offers without trickle (all candidates in the offer), gathers on `--local-address`
only when given (127.0.0.1 in tests: libnice skips loopback otherwise), and prints one JSON line when done:
for `play`, the decoded video frames and audio buffers, the first frame's delay and
the picture size. It exits non-zero when the session failed or `--min-frames` (play)
were not decoded.
"""

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VIDEO_SOURCE = (
    "videotestsrc is-live=true pattern=ball ! "
    "video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert ! queue ! "
)
VIDEO_ENCODERS = {
    "vp8": (
        "vp8enc deadline=1 keyframe-max-dist=60 target-bitrate=500000 ! "
        "rtpvp8pay pt=96 picture-id-mode=15-bit ! "
        "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"
    ),
    "h264": (
        "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 bitrate=500 ! "
        "video/x-h264,profile=constrained-baseline ! "
        "rtph264pay pt=102 config-interval=-1 aggregate-mode=zero-latency ! "
        "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000"
    ),
}
AUDIO = (
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! queue ! "
    "opusenc ! rtpopuspay pt=111 ! "
    "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000"
)
PLAY_CAPS = {
    "video": "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
    "h264": (
        "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
        "packetization-mode=(string)1,profile-level-id=(string)42e01f"
    ),
    "audio": (
        "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,"
        "encoding-params=(string)2"
    ),
}


def log(message):
    print(f"webrtcbin_client: {message}", file=sys.stderr, flush=True)


def keep_candidates(sdp, prefix):
    """Drops every a=candidate line whose address does not start with `prefix`."""
    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 5 or not fields[4].startswith(prefix):
                continue
        lines.append(line)
    return "\r\n".join(lines)


class Session:
    def __init__(self, args):
        self.args = args
        self.loop = GLib.MainLoop()
        self.failure = None
        self.resource = None
        self.started = time.monotonic()
        self.first_frame = None
        self.video_frames = 0
        self.audio_buffers = 0
        self.size = None
        self.ice_state = None
        self.lock = threading.Lock()
        if args.mode == "publish":
            description = (
                "webrtcbin name=webrtc bundle-policy=max-bundle "
                f"{VIDEO_SOURCE}{VIDEO_ENCODERS[args.codec]} ! webrtc. "
            )
            if not args.no_audio:
                description += f"{AUDIO} ! webrtc. "
            self.pipeline = Gst.parse_launch(description)
            self.webrtc = self.pipeline.get_by_name("webrtc")
        else:
            self.pipeline = Gst.Pipeline.new("player")
            self.webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
            self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
            self.pipeline.add(self.webrtc)
            direction = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
            video_caps = PLAY_CAPS["h264" if args.codec == "h264" else "video"]
            self.webrtc.emit("add-transceiver", direction, Gst.Caps.from_string(video_caps))
            if not args.no_audio:
                self.webrtc.emit(
                    "add-transceiver", direction, Gst.Caps.from_string(PLAY_CAPS["audio"])
                )
            self.webrtc.connect("pad-added", self.on_incoming_stream)
        if args.local_address:
            # libnice leaves loopback out unless told; this also keeps ICE on it alone.
            agent = self.webrtc.get_property("ice-agent")
            self.ice_agent = agent
            if not agent.emit("add-local-ip-address", args.local_address):
                raise SystemExit(f"libnice refused the local address {args.local_address}")
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering_state)
        self.webrtc.connect("notify::ice-connection-state", self.on_ice_state)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)

    def fail(self, reason):
        if self.failure is None:
            self.failure = reason
            log(f"failed: {reason}")
        self.loop.quit()

    def on_error(self, _bus, message):
        error, debug = message.parse_error()
        self.fail(f"{error.message} ({debug})")

    def on_ice_state(self, webrtc, _param):
        state = webrtc.get_property("ice-connection-state")
        self.ice_state = state.value_nick
        log(f"ICE {self.ice_state}")
        if state == GstWebRTC.WebRTCICEConnectionState.FAILED:
            self.fail("ICE failed")

    def on_negotiation_needed(self, webrtc):
        promise = Gst.Promise.new_with_change_func(self.on_offer_created, webrtc, None)
        webrtc.emit("create-offer", None, promise)

    def on_offer_created(self, promise, webrtc, _data):
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_gathering_state(self, webrtc, _param):
        if webrtc.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return
        offer = webrtc.get_property("local-description").sdp.as_text()
        offer = keep_candidates(offer, self.args.candidate_prefix)
        # The POST blocks; the answer is applied back on the main loop.
        threading.Thread(target=self.post_offer, args=(offer,), daemon=True).start()

    def post_offer(self, offer):
        if self.args.show_sdp:
            log(f"offer:\n{offer}")
        request = urllib.request.Request(
            self.args.url,
            data=offer.encode(),
            headers={"Content-Type": "application/sdp"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = response.read().decode()
                location = response.headers.get("Location")
                if location:
                    self.resource = urllib.parse.urljoin(self.args.url, location)
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            GLib.idle_add(self.fail, f"POST answered {error.code}: {body}")
            return
        except OSError as error:
            GLib.idle_add(self.fail, f"POST failed: {error}")
            return
        GLib.idle_add(self.apply_answer, answer)

    def apply_answer(self, answer):
        if self.args.show_sdp:
            log(f"answer:\n{answer}")
        result, message = GstSdp.SDPMessage.new_from_text(answer)
        if result != GstSdp.SDPResult.OK:
            self.fail("the answer does not parse")
            return False
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.webrtc.emit("set-remote-description", description, Gst.Promise.new())
        log("answer applied")
        return False

    def on_incoming_stream(self, _webrtc, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self.on_decoded_pad)
        self.pipeline.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def on_decoded_pad(self, _decodebin, pad):
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name()
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        sink.set_property("signal-handoffs", True)
        if name.startswith("video"):
            sink.connect("handoff", self.on_video_frame)
        else:
            sink.connect("handoff", self.on_audio_buffer)
        self.pipeline.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def on_video_frame(self, _sink, _buffer, pad):
        with self.lock:
            self.video_frames += 1
            if self.first_frame is None:
                self.first_frame = time.monotonic() - self.started
                structure = pad.get_current_caps().get_structure(0)
                self.size = [structure.get_value("width"), structure.get_value("height")]
                log(f"first video frame after {self.first_frame:.2f} s, {self.size}")

    def on_audio_buffer(self, _sink, _buffer, _pad):
        with self.lock:
            self.audio_buffers += 1

    def run(self):
        self.pipeline.set_state(Gst.State.PLAYING)
        GLib.timeout_add(int(self.args.seconds * 1000), self.loop.quit)
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        if self.resource:
            try:
                urllib.request.urlopen(
                    urllib.request.Request(self.resource, method="DELETE"), timeout=5
                ).close()
            except OSError as error:
                log(f"DELETE failed: {error}")
        with self.lock:
            summary = {
                "mode": self.args.mode,
                "codec": self.args.codec,
                "ice": self.ice_state,
                "failure": self.failure,
                "video_frames": self.video_frames,
                "audio_buffers": self.audio_buffers,
                "first_frame_seconds": self.first_frame,
                "size": self.size,
            }
        print(json.dumps(summary), flush=True)
        if self.failure is not None:
            return 1
        if self.ice_state not in ("connected", "completed"):
            return 1
        if self.args.mode == "play" and self.video_frames < self.args.min_frames:
            return 1
        return 0


NEEDED_ELEMENTS = [
    "webrtcbin", "nicesrc", "dtlssrtpenc", "videotestsrc", "vp8enc", "vp8dec", "x264enc",
    "avdec_h264", "audiotestsrc", "opusenc", "opusdec", "decodebin", "fakesink",
]


def check():
    """Exit 0 when every element the client needs is installed, else name the missing."""
    missing = [name for name in NEEDED_ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        print(f"missing GStreamer elements: {' '.join(missing)}")
        return 1
    print("ok")
    return 0


def main():
    if sys.argv[1:] == ["check"]:
        Gst.init(None)
        return check()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["publish", "play"])
    parser.add_argument("url")
    parser.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--min-frames", type=int, default=1)
    parser.add_argument(
        "--local-address",
        help="gather ICE candidates on this address only (default: every interface)",
    )
    parser.add_argument(
        "--candidate-prefix",
        default="",
        help="send only the candidates whose address starts with this",
    )
    parser.add_argument("--show-sdp", action="store_true", help="log the offer and answer")
    args = parser.parse_args()
    Gst.init(None)
    return Session(args).run()


if __name__ == "__main__":
    sys.exit(main())
