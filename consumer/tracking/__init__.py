"""Per-camera tracking, zones and line counts whose state can move between workers (issue 30).

No Kafka here: `config` (camera configuration, a cameras-topic record), `tracker`
(ByteTrack with exact save/restore), `zones` (lines and zones with hysteresis),
`events` (event records with deterministic ids), `state` (a camera's state and
`apply`, one frame forward), `cameras` (one worker's cameras, fed record by record).
The worker wires them to Kafka in `consumer.tracking_stage` (docs/tracking.md).
"""
