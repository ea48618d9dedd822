"""A real RTSP camera for the tests and the demo: GStreamer's RTSP server.

Run by the system `/usr/bin/python3` (Debian's python3-gi and
gir1.2-gst-rtsp-server-1.0), never by the project's virtualenv, which has no
GObject bindings. It serves each mount as H.264 (x264, zero-latency) encoded
from a folder of JPEG frames (`frame_000.jpg`...) looped forever, paced at the
mount's frame rate like a real camera's clock, and scaled to the mount's size
when it has one; a key frame every second. With `--auth`, every mount asks
for those credentials (answering 401 without them).

    /usr/bin/python3 deploy/local/rtsp_server.py --port 8554 \
        --mount cam=/tmp/frames:25[:1920x1080] [--mount ...] [--auth admin:secret]

Mounts are shared: every client of a mount watches one encoder, so sixteen
cameras on one mount cost one encode. Lines on stdin drive failures:
`stall NAME` stops a mount's frames without closing its connections (a camera
that hangs), `resume NAME` sends them again. "ready PORT" is printed once the
server listens.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def pipeline(folder: str, fps: int, size: str) -> str:
    """`size` WIDTHxHEIGHT scales the frames (stretching them), empty keeps theirs."""
    scale = ""
    if size:
        width, height = size.split("x")
        scale = (
            "videoscale add-borders=false ! "
            f"video/x-raw,width={width},height={height},pixel-aspect-ratio=1/1 ! "
        )
    return (
        f'( multifilesrc location="{folder}/frame_%03d.jpg" loop=true '
        f'caps="image/jpeg,framerate={fps}/1" ! jpegdec ! videoconvert ! {scale}'
        f"videorate ! video/x-raw,framerate={fps}/1 ! identity sync=true ! "
        "valve name=valve drop=false ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=800 ! "
        "video/x-h264,profile=constrained-baseline ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--mount", action="append", default=[], help="NAME=FOLDER:FPS[:WIDTHxHEIGHT]"
    )
    parser.add_argument("--auth", default="", help="USER:PASSWORD every client must give")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    if args.auth:
        # No default token: a client without these credentials is answered 401
        # (with a default token, GStreamer answers 404 to the mounts it may not see).
        user, password = args.auth.split(":", 1)
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", user)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
    role = args.auth.split(":", 1)[0] if args.auth else "anonymous"
    valves: dict[str, list[Gst.Element]] = {}
    stalled: set[str] = set()
    for spec in args.mount:
        name, rest = spec.split("=", 1)
        folder, fps, *size = rest.split(":")
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(pipeline(folder, int(fps), size[0] if size else ""))
        factory.set_shared(True)
        factory.add_role_from_structure(
            Gst.Structure.new_from_string(
                f"{role}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )
        )

        def configured(_factory: object, media: object, name: str = name) -> None:
            valve = media.get_element().get_by_name("valve")  # type: ignore[attr-defined]
            valve.set_property("drop", name in stalled)
            valves.setdefault(name, []).append(valve)

        factory.connect("media-configure", configured)
        mounts.add_factory(f"/{name}", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()

    def command(channel: GLib.IOChannel, _condition: object) -> bool:
        line = channel.readline()
        if not line:
            loop.quit()
            return False
        verb, _, name = line.strip().partition(" ")
        if verb in ("stall", "resume"):
            if verb == "stall":
                stalled.add(name)
            else:
                stalled.discard(name)
            for valve in valves.get(name, []):
                valve.set_property("drop", verb == "stall")
        print(f"ok {line.strip()}", flush=True)
        return True

    GLib.io_add_watch(GLib.IOChannel.unix_new(0), GLib.IO_IN | GLib.IO_HUP, command)
    print(f"ready {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
