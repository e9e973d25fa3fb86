#!/usr/bin/env python3
"""Checks a Perfetto trace the way trace_processor will read it, with Perfetto's own schema.

The schema is the perfetto PyPI package's generated `perfetto_trace_pb2` (Perfetto's published
protos, a newer release than the Rust crate the exporter is built on), so a field number or
type that drifted shows up as an unknown field. The rules are the ones trace_processor applies
to track events: one sequence whose first packet clears incremental state, every track
described before it is used, slices that nest per track after sorting by timestamp (the
importer sorts the whole file), counters only on counter tracks, flows that end where they
began.

Usage: perfetto_check.py TRACE.pftrace; prints one JSON object (the summary and `errors`) and
exits 1 when there is any error. Used by tests/tests/perfetto_schema.rs; `cargo xtask setup`
installs the packages into target/tools/venv.
"""

import collections
import json
import sys

from google.protobuf.unknown_fields import UnknownFieldSet
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

SEQ_INCREMENTAL_STATE_CLEARED = 1
SEQ_NEEDS_INCREMENTAL_STATE = 2
MAX_ERRORS = 50


def frames(data, errors):
    """(offset, bytes) of each TracePacket, framed as field 1 of Trace."""
    i = 0
    while i < len(data):
        if data[i] != 0x0A:
            errors.append(f"byte {i}: tag {data[i]:#x}, not field 1 (packet) length-delimited")
            return
        i += 1
        n = shift = 0
        while True:
            if i >= len(data):
                errors.append("the file ends inside a packet's length")
                return
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if i + n > len(data):
            errors.append(f"byte {i}: a packet of {n} bytes runs past the end of the file")
            return
        yield i, data[i : i + n]
        i += n


def unknown_fields(msg, path):
    """Paths of (sub)messages holding fields the schema does not know."""
    out = []
    if len(UnknownFieldSet(msg)):
        out.append(path)
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if repeated:
            for j, v in enumerate(value):
                out += unknown_fields(v, f"{path}.{fd.name}[{j}]")
        else:
            out += unknown_fields(value, f"{path}.{fd.name}")
    return out


def main(path):
    data = open(path, "rb").read()
    errors = []
    err = errors.append
    packets = []
    for offset, body in frames(data, errors):
        p = pb.TracePacket()
        try:
            p.ParseFromString(body)
        except Exception as e:  # the message does not parse with Perfetto's schema
            err(f"packet at byte {offset}: {e}")
            continue
        for u in unknown_fields(p, f"packet at byte {offset}"):
            err(f"{u}: fields unknown to Perfetto's schema")
        packets.append(p)

    # One sequence; its first packet clears incremental state.
    seqs = {p.trusted_packet_sequence_id for p in packets}
    if 0 in seqs:
        err("a packet without trusted_packet_sequence_id")
    first_flags = collections.OrderedDict()
    for p in packets:
        first_flags.setdefault(p.trusted_packet_sequence_id, p.sequence_flags)
    for seq, flags in first_flags.items():
        if not flags & SEQ_INCREMENTAL_STATE_CLEARED:
            err(f"sequence {seq}: its first packet does not set SEQ_INCREMENTAL_STATE_CLEARED")

    # Tracks, in file order: parents first, before any event on it. A track may be described
    # again to rename it (an exec, a thread's new name), as the same kind of track with the
    # same parent, process and thread.
    tracks = {}
    identity = {}
    process_pid = {}
    kinds = collections.Counter()
    described_at = {}
    for i, p in enumerate(packets):
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            if not d.uuid:
                err(f"packet {i}: a track descriptor without uuid")
            ident = (
                d.parent_uuid,
                d.HasField("thread"),
                d.thread.pid,
                d.thread.tid,
                d.HasField("process"),
                d.process.pid,
                d.HasField("counter"),
            )
            if d.uuid in identity:
                if identity[d.uuid] != ident:
                    err(f"packet {i}: track {d.uuid:#x} described again as another track")
                continue
            identity[d.uuid] = ident
            if d.HasField("parent_uuid") and d.parent_uuid not in tracks:
                err(f"packet {i}: track {d.uuid:#x}'s parent {d.parent_uuid:#x} is not described before it")
            if d.HasField("thread"):
                kind = "thread"
                if not (d.thread.HasField("pid") and d.thread.HasField("tid")):
                    err(f"packet {i}: thread track {d.uuid:#x} without pid and tid")
                parent = process_pid.get(d.parent_uuid)
                if d.HasField("parent_uuid") and parent is not None and parent != d.thread.pid:
                    err(f"packet {i}: thread {d.thread.tid} of pid {d.thread.pid} under the track of pid {parent}")
            elif d.HasField("process"):
                kind = "process"
                process_pid[d.uuid] = d.process.pid
                if not d.process.HasField("pid"):
                    err(f"packet {i}: process track {d.uuid:#x} without pid")
            elif d.HasField("counter"):
                kind = "counter"
            else:
                kind = "plain"
            tracks[d.uuid] = kind
            kinds[kind] += 1
            described_at[d.uuid] = i

    # Events: described tracks, then the nesting trace_processor builds after its sort.
    events = []
    for i, p in enumerate(packets):
        if not p.HasField("track_event"):
            continue
        e = p.track_event
        if p.sequence_flags & SEQ_NEEDS_INCREMENTAL_STATE:
            err(f"packet {i}: needs incremental state, which this exporter never writes")
        if not p.HasField("timestamp"):
            err(f"packet {i}: a track event without timestamp")
        if not e.HasField("track_uuid"):
            err(f"packet {i}: a track event on the default track (no track_uuid)")
        elif e.track_uuid not in described_at or described_at[e.track_uuid] > i:
            err(f"packet {i}: track {e.track_uuid:#x} is used before it is described")
        events.append((p.timestamp, i, e))
    events.sort(key=lambda t: (t[0], t[1]))  # the importer's sort is stable

    T = pb.TrackEvent
    open_slices = collections.defaultdict(list)
    slices = collections.Counter()
    counters = collections.Counter()
    last_counter = {}
    instants = collections.Counter()
    flows_begun, flows_ended = set(), set()
    for ts, i, e in events:
        kind = tracks.get(e.track_uuid)
        if e.type == T.TYPE_SLICE_BEGIN:
            if not e.name:
                err(f"packet {i}: a slice without a name")
            open_slices[e.track_uuid].append((ts, e.name))
        elif e.type == T.TYPE_SLICE_END:
            stack = open_slices[e.track_uuid]
            if not stack:
                err(f"packet {i}: a slice end on track {e.track_uuid:#x} with no slice open")
            else:
                begun, name = stack.pop()
                slices[name] += 1
        elif e.type == T.TYPE_INSTANT:
            if not e.name:
                err(f"packet {i}: an instant without a name")
            instants[e.name.split(" ")[0]] += 1
        elif e.type == T.TYPE_COUNTER:
            if kind != "counter":
                err(f"packet {i}: a counter value on a {kind} track")
            if not (e.HasField("counter_value") or e.HasField("double_counter_value")):
                err(f"packet {i}: a counter event without a value")
            counters[e.track_uuid] += 1
            last_counter[e.track_uuid] = e.counter_value or e.double_counter_value
        else:
            err(f"packet {i}: track event type {e.type}")
        if e.type != T.TYPE_SLICE_END:
            for f in e.flow_ids:
                if f in flows_begun:
                    err(f"packet {i}: flow {f:#x} begun twice")
                flows_begun.add(f)
        for f in e.terminating_flow_ids:
            if f not in flows_begun:
                err(f"packet {i}: flow {f:#x} ends before it begins")
            flows_ended.add(f)
    left_open = sum(len(s) for s in open_slices.values())
    if left_open:
        err(f"{left_open} slices never end (every wait and lifetime should end by the trace's end)")

    counter_names = collections.Counter()
    for p in packets:
        if p.HasField("track_descriptor") and p.track_descriptor.HasField("counter"):
            counter_names[p.track_descriptor.name] += 1
    summary = {
        "packets": len(packets),
        "sequences": len(seqs),
        "tracks": dict(kinds),
        "counter_tracks_by_name": dict(counter_names),
        "slices": dict(slices),
        "counter_values": sum(counters.values()),
        "instants": dict(instants),
        "flows_begun": len(flows_begun),
        "flows_terminated": len(flows_ended),
        "errors": errors[:MAX_ERRORS],
        "error_count": len(errors),
    }
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: perfetto_check.py TRACE.pftrace")
    sys.exit(main(sys.argv[1]))
