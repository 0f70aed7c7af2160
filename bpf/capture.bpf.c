/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * capture.bpf.c -- hdrlog's hook entry points: tc clsact ingress/egress, and
 * XDP as an ingress-only option.
 *
 * Each packet: count it, parse its headers into a struct hdrlog_record
 * (parse.h), apply the run-time filters (CIDR tries, protocol and port sets),
 * then 1-in-N sampling, and write the record to the `events` ring buffer.
 * A full ring buffer loses the record but never silently: HDRLOG_C_RB_FAIL
 * counts it.  Invariant: seen = filtered + sampled_out + emitted + rb_fail.
 *
 * Wake-ups are batched: only every config[HDRLOG_CFG_WAKEUP_RECORDS]-th
 * record on a CPU wakes the reader; the reader also polls on a short timer,
 * which bounds latency at low rates.
 *
 * The programs never change the packet's fate: tc returns TC_ACT_UNSPEC so
 * any other classifier on the hook still runs, XDP returns XDP_PASS.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "maps.h"
#include "parse.h"

static __always_inline void count(__u32 idx)
{
	u64 *v = counters.lookup(&idx);

	if (v)
		*v += 1;
}

static __always_inline __u32 cfg(__u32 idx)
{
	u32 *v = config.lookup(&idx);

	return v ? *v : 0;
}

static __always_inline __u8 cidr_verdict(struct hdrlog_record *r, int dst)
{
	__u8 *v;

	if (r->ip_version == 4) {
		struct hdrlog_cidr4_key k4 = {.prefixlen = 32};

		__builtin_memcpy(k4.addr, dst ? r->dst_ip : r->src_ip, 4);
		v = cidr4.lookup(&k4);
	} else {
		struct hdrlog_cidr6_key k6 = {.prefixlen = 128};

		__builtin_memcpy(k6.addr, dst ? r->dst_ip : r->src_ip, 16);
		v = cidr6.lookup(&k6);
	}
	return v ? *v : 0;
}

static __always_inline int listed_port(__u16 port)
{
	__u32 k = port;
	__u8 *v = ports.lookup(&k);

	return v && *v;
}

/* 1 when the record passes every active filter */
static __always_inline int wanted(struct hdrlog_record *r, __u32 active)
{
	__u8 vs, vd;

	if (!active)
		return 1;
	if (!(r->flags & HDRLOG_F_IP))
		return !(active & HDRLOG_FILTER_DROP_L2);
	vs = cidr_verdict(r, 0);
	vd = cidr_verdict(r, 1);
	if (vs == HDRLOG_CIDR_EXCLUDE || vd == HDRLOG_CIDR_EXCLUDE)
		return 0;
	if ((active & HDRLOG_FILTER_INCLUDE) && vs != HDRLOG_CIDR_INCLUDE &&
	    vd != HDRLOG_CIDR_INCLUDE)
		return 0;
	if (active & HDRLOG_FILTER_PROTOS) {
		__u32 k = r->ip_proto;
		__u8 *v = protos.lookup(&k);

		if (!v || !*v)
			return 0;
	}
	if (active & HDRLOG_FILTER_PORTS) {
		if (!(r->flags & HDRLOG_F_PORTS))
			return 0;
		if (!listed_port(r->src_port) && !listed_port(r->dst_port))
			return 0;
	}
	return 1;
}

/* The common path of every hook: parse, filter, sample, write. */
static __always_inline void handle(void *ctx, const int xdp, struct hdrlog_record *r,
				   __u32 frame_len, __u32 offloaded_tags)
{
	__u32 rate, wake, idx = HDRLOG_C_EMITTED;
	__u64 flags = BPF_RB_NO_WAKEUP;
	u64 *emitted;

	count(HDRLOG_C_SEEN);
	rate = cfg(HDRLOG_CFG_SAMPLE_RATE);
	r->ts_ns = bpf_ktime_get_ns();
	r->sample_rate = rate > 1 ? rate : 1;
	hl_parse_packet(ctx, xdp, r, frame_len, offloaded_tags);
	if (r->flags & HDRLOG_F_ANOMALY)
		count(HDRLOG_C_PARSE_ANOMALY); /* of every packet seen, recorded or not */
	if (!wanted(r, cfg(HDRLOG_CFG_FILTER))) {
		count(HDRLOG_C_FILTERED);
		return;
	}
	/* sampling after filtering: sample_rate describes the matching traffic */
	if (rate > 1 && bpf_get_prandom_u32() % rate != 0) {
		count(HDRLOG_C_SAMPLED_OUT);
		return;
	}

	emitted = counters.lookup(&idx);
	if (!emitted)
		return;
	wake = cfg(HDRLOG_CFG_WAKEUP_RECORDS);
	if (wake <= 1 || (*emitted + 1) % wake == 0)
		flags = BPF_RB_FORCE_WAKEUP;
	/* the record's identity: this CPU's count of records written so far.  A program
	 * does not migrate and does not nest on one CPU, so the per-CPU counter is ours. */
	r->cpu = bpf_get_smp_processor_id();
	r->seq = *emitted;
	if (events.ringbuf_output(r, sizeof(*r), flags) != 0)
		count(HDRLOG_C_RB_FAIL);
	else
		*emitted += 1;
}

static __always_inline int handle_tc(struct __sk_buff *skb, __u8 direction)
{
	struct hdrlog_record r;
	__u32 tags = 0;

	__builtin_memset(&r, 0, sizeof(r));
	r.ifindex = skb->ifindex;
	r.pkt_len = skb->len;
	r.gso_segments = skb->gso_segs > 1 ? skb->gso_segs : 1;
	r.direction = direction;
	if (skb->vlan_present) {
		/* the outer tag, moved out of the packet by the core or the driver */
		r.vlan_ids[0] = skb->vlan_tci & 0x0fff;
		r.vlan_count = 1;
		r.pkt_len += 4; /* packet_length is the frame as on the wire */
		tags = 1;
	}
	handle(skb, 0, &r, skb->len, tags);
	return TC_ACT_UNSPEC;
}

int hdrlog_ingress(struct __sk_buff *skb)
{
	return handle_tc(skb, HDRLOG_DIR_INGRESS);
}

int hdrlog_egress(struct __sk_buff *skb)
{
	return handle_tc(skb, HDRLOG_DIR_EGRESS);
}

/* XDP: ingress only, before the stack allocates an skb (the high-rate option) */
int hdrlog_xdp(struct xdp_md *ctx)
{
	struct hdrlog_record r;
	__u32 len = bpf_xdp_get_buff_len(ctx);

	__builtin_memset(&r, 0, sizeof(r));
	r.ifindex = ctx->ingress_ifindex;
	r.pkt_len = len;
	r.gso_segments = 1;
	r.direction = HDRLOG_DIR_INGRESS;
	handle(ctx, 1, &r, len, 0);
	return XDP_PASS;
}
