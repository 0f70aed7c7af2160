/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * maps.h -- every map of the capture program.
 * Compile-time options come in through cflags (-D...), never string edits:
 *   HDRLOG_RINGBUF_PAGES  ring buffer size in pages (a power of two)
 */
#ifndef HDRLOG_MAPS_H
#define HDRLOG_MAPS_H

#include "record.h"

#ifndef HDRLOG_RINGBUF_PAGES
#error "HDRLOG_RINGBUF_PAGES must come from cflags (capture.ringbuf_pages, one default: producer/config.py)"
#endif

/* events: ring buffer of struct hdrlog_record (fixed size), read by
 * producer/capture/ringbuf.py through a direct mmap of the map. */
BPF_RINGBUF_OUTPUT(events, HDRLOG_RINGBUF_PAGES);

/* counters: Key = HDRLOG_C_* index, Value = per-CPU packet count. */
BPF_PERCPU_ARRAY(counters, u64, HDRLOG_C_MAX);

/* config: Key = HDRLOG_CFG_* index, Value = setting; written by user space
 * at run time (no reload needed). */
BPF_ARRAY(config, u32, HDRLOG_CFG_MAX);

/* cidr4 / cidr6: Key = prefix (struct hdrlog_cidr{4,6}_key), Value =
 * HDRLOG_CIDR_INCLUDE or HDRLOG_CIDR_EXCLUDE.  Longest prefix match. */
BPF_LPM_TRIE(cidr4, struct hdrlog_cidr4_key, u8, 1024);
BPF_LPM_TRIE(cidr6, struct hdrlog_cidr6_key, u8, 1024);

/* protos: Key = IP protocol number, Value = 1 when listed. */
BPF_ARRAY(protos, u8, 256);

/* ports: Key = port number, Value = 1 when listed. */
BPF_ARRAY(ports, u8, 65536);

/* record_layout: Key = 0, Value = struct hdrlog_record.  Never written: it
 * puts the record type into the program's BTF, where tests/test_layout.py
 * reads the compiled size and offsets. */
BPF_ARRAY(record_layout, struct hdrlog_record, 1);

#endif /* HDRLOG_MAPS_H */
