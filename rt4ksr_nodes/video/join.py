"""The final file from finished segments, without re-encoding: the segments' video packets in
order, and the source's other streams (audio, subtitles, data) copied once over the whole length,
merged by time so that memory stays flat. The output is set up as a single pass sets it up
(container metadata, chapters, stream tags, display matrix)."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path

import av

from .codecs import EncoderPlan
from .pipeline import Warn, close_quietly, copy_container, copy_tags, open_output, tag_video_stream
from .segments import SegmentJob, SegmentMismatch
from .source import VideoSource, main_stream, open_video

EARLIEST = Fraction(-(10**18))  # where a packet without any timestamp goes: muxed as it comes


def join(job: SegmentJob, handle, encoder_plan: EncoderPlan, source: VideoSource, metadata: Mapping[str, str],
         dst: Path, note: Warn) -> int:
    """Write the joined file into `handle` as `encoder_plan` says; returns the video frames written."""
    container = open_video(job.source)
    first = None
    try:
        first = av.open(str(job.segment_path(0)))
        output = open_output(handle, encoder_plan.muxer)
        try:
            template = first.streams.video[0]
            # (opaque: the decoder's codec object; an encoder of that name, e.g. for AV1, may not exist)
            video = output.add_stream_from_template(template, opaque=True)
            if source.rate:  # as the encoder's (Matroska's frame durations come from it)
                video.codec_context.framerate = source.rate
            if encoder_plan.muxer in ("mp4", "mov"):  # the sample entry (ProRes' says its profile)
                video.codec_tag = template.codec_tag
            tag_video_stream(video, source, encoder_plan)
            copy_tags(main_stream(container), video)
            # The encoder's pixel format, as a single pass gives it to the muxer (WebM writes the
            # alpha flag from it; demuxers may report VP9 with alpha as without).
            video.codec_context.pix_fmt = encoder_plan.pix_fmt
            copied = copy_container(container, output, metadata, dst, note)
            output.start_encoding()
            frames = 0
            merged = heapq.merge(_copied_packets(container, copied), _video_packets(job, video, source.time_base),
                                 key=_seconds)
            for packet in merged:
                frames += packet.stream is video
                output.mux(packet)
            output.close()
        except BaseException:
            close_quietly(output)
            raise
    finally:
        container.close()
        if first is not None:
            first.close()
    return frames


def _copied_packets(container, copied: dict) -> Iterator[av.Packet]:
    if not copied:  # (demux() of no stream reads them all)
        return
    for packet in container.demux([container.streams[index] for index in copied]):
        if packet.size:  # not the demuxer's end-of-stream marker
            packet.stream = copied[packet.stream.index]
            yield packet


def _video_packets(job: SegmentJob, video, time_base: Fraction) -> Iterator[av.Packet]:
    """Every segment's video packets in order, timestamps made exact and decode times monotonic;
    SegmentMismatch where a segment is not what the plan says or overlaps the one before."""
    last, latest = None, None  # the dts of the packet before; the latest pts of the segments before
    for segment in job.segments:
        path = job.segment_path(segment.index)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            shift, count, top = None, 0, None
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                count += 1
                if shift is None:
                    # The first packet is the segment's first frame. MP4/MOV store a start time
                    # in the movie's time scale (ms), which may move it by a fraction of a ms.
                    shift = _rescale(segment.start, time_base, stream.time_base) - packet.pts
                packet.pts += shift
                if latest is not None and packet.pts <= latest:
                    raise SegmentMismatch(f"{path}: a frame at pts {packet.pts} is not after the previous "
                                          f"segment's last ({latest}): the segments overlap")
                top = packet.pts if top is None else max(top, packet.pts)
                if packet.dts is not None:
                    dts = packet.dts + shift
                else:  # Matroska and NUT give no dts to the first packets before B-frames
                    dts = packet.pts if last is None else last + 1
                if last is not None and dts <= last:  # across a boundary
                    dts = last + 1
                    if dts > packet.pts:
                        raise SegmentMismatch(f"{path}: its decode times cannot follow the previous "
                                              f"segment's (pts {packet.pts}, decode time {last} before it)")
                packet.dts = last = dts
                packet.stream = video
                yield packet
            latest = top if top is not None else latest
            if count != segment.frames:
                raise SegmentMismatch(f"{path}: {count} frames where the plan has {segment.frames}")


def _rescale(value: int, source: Fraction, target: Fraction) -> int:
    """value from one time base to another, rounded to nearest, halves away from zero (as
    FFmpeg's muxers round)."""
    exact = value * source / target
    return int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))


def _seconds(packet: av.Packet) -> Fraction:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return EARLIEST if stamp is None else stamp * packet.time_base
