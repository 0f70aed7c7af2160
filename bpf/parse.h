/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * parse.h -- bounded header parsing for struct hdrlog_record.
 *
 * All reads go through bpf_skb_load_bytes() (tc) or bpf_xdp_load_bytes()
 * (XDP) with constant lengths, so variable offsets (IPv4 options, IPv6
 * extension headers, VLAN stacks) never trouble the verifier and non-linear
 * packets are read correctly.  `xdp` is a compile-time constant at every call
 * site (the functions are always inlined), so each program keeps one helper.  A header that
 * does not fit in what the frame (or the IP datagram) holds marks the record
 * HDRLOG_F_TRUNCATED and leaves every later field absent; a header that lies
 * (IHL < 5, a length beyond the frame) marks it HDRLOG_F_ANOMALY.
 */
#ifndef HDRLOG_PARSE_H
#define HDRLOG_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include "record.h"

#define HDRLOG_MAX_VLAN      3  /* VLAN tags followed (offloaded one included); 2 ids kept */
#define HDRLOG_MAX_IPV6_EXT  6  /* extension headers we follow before giving up */

#define ETH_P_8021Q_  0x8100
#define ETH_P_8021AD_ 0x88A8

/* load `len` bytes at `off` if they lie before `end`; 0 on success */
static __always_inline int hl_load(void *ctx, const int xdp, __u32 off, void *dst, __u32 len,
				   __u32 end)
{
	if (off + len > end)
		return -1;
	if (xdp)
		return bpf_xdp_load_bytes(ctx, off, dst, len);
	return bpf_skb_load_bytes(ctx, off, dst, len);
}

static __always_inline void hl_parse_l4(void *ctx, const int xdp, struct hdrlog_record *r,
					__u32 off, __u32 end)
{
	__u8 b[20];

	switch (r->ip_proto) {
	case IPPROTO_TCP:
		if (hl_load(ctx, xdp, off, b, 4, end) < 0)
			goto trunc;
		r->src_port = ((__u16)b[0] << 8) | b[1];
		r->dst_port = ((__u16)b[2] << 8) | b[3];
		r->flags |= HDRLOG_F_PORTS;
		if (hl_load(ctx, xdp, off, b, 20, end) < 0)
			goto trunc;
		r->tcp_seq = ((__u32)b[4] << 24) | ((__u32)b[5] << 16) | ((__u32)b[6] << 8) | b[7];
		r->tcp_ack = ((__u32)b[8] << 24) | ((__u32)b[9] << 16) | ((__u32)b[10] << 8) | b[11];
		r->tcp_flags = ((__u16)(b[12] & 0x01) << 8) | b[13];
		r->tcp_window = ((__u16)b[14] << 8) | b[15];
		r->flags |= HDRLOG_F_TCP;
		if ((b[12] >> 4) < 5)
			r->flags |= HDRLOG_F_ANOMALY; /* data offset below the minimum */
		return;
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
	case IPPROTO_SCTP:
		if (hl_load(ctx, xdp, off, b, 4, end) < 0)
			goto trunc;
		r->src_port = ((__u16)b[0] << 8) | b[1];
		r->dst_port = ((__u16)b[2] << 8) | b[3];
		r->flags |= HDRLOG_F_PORTS;
		if (r->ip_proto == IPPROTO_UDP && hl_load(ctx, xdp, off, b, 8, end) < 0)
			goto trunc;
		return;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if (hl_load(ctx, xdp, off, b, 2, end) < 0)
			goto trunc;
		r->icmp_type = b[0];
		r->icmp_code = b[1];
		r->flags |= HDRLOG_F_ICMP;
		return;
	default:
		return;
	}
trunc:
	r->flags |= HDRLOG_F_TRUNCATED;
}

/* the end of the IP datagram, bounded by the frame; flags a lying length */
static __always_inline __u32 hl_ip_end(struct hdrlog_record *r, __u32 off, __u32 ip_len,
				       __u32 frame_len)
{
	__u32 end = off + ip_len;

	if (end > frame_len) {
		r->flags |= HDRLOG_F_ANOMALY;
		return frame_len;
	}
	return end;
}

static __always_inline void hl_parse_ipv4(void *ctx, const int xdp, struct hdrlog_record *r,
					  __u32 off, __u32 frame_len)
{
	struct iphdr ip;
	__u32 ihl, end;
	__u16 frag;

	if (hl_load(ctx, xdp, off, &ip, sizeof(ip), frame_len) < 0) {
		r->flags |= HDRLOG_F_TRUNCATED;
		return;
	}
	r->ip_version = ip.version;
	r->tos = ip.tos;
	r->ttl = ip.ttl;
	r->ip_proto = ip.protocol;
	r->ip_total_length = bpf_ntohs(ip.tot_len);
	r->ip_id = bpf_ntohs(ip.id);
	__builtin_memcpy(r->src_ip, &ip.saddr, 4);
	__builtin_memcpy(r->dst_ip, &ip.daddr, 4);
	frag = bpf_ntohs(ip.frag_off);
	r->fragment_offset = frag & 0x1fff;
	if (frag & 0x4000)
		r->flags |= HDRLOG_F_DF;
	if (frag & 0x2000)
		r->flags |= HDRLOG_F_MF;
	r->flags |= HDRLOG_F_IP | HDRLOG_F_IP_ID | HDRLOG_F_FRAG;

	ihl = (__u32)ip.ihl * 4;
	if (ip.version != 4 || ihl < sizeof(ip) || r->ip_total_length < ihl) {
		r->flags |= HDRLOG_F_ANOMALY;
		return;
	}
	end = hl_ip_end(r, off, r->ip_total_length, frame_len);
	if (off + ihl > end) {
		r->flags |= HDRLOG_F_TRUNCATED;
		return;
	}
	if (r->fragment_offset != 0)
		return; /* non-first fragment: no transport header */
	hl_parse_l4(ctx, xdp, r, off + ihl, end);
}

static __always_inline void hl_parse_ipv6(void *ctx, const int xdp, struct hdrlog_record *r,
					  __u32 off, __u32 frame_len)
{
	struct ipv6hdr ip6;
	__u8 b[8];
	__u32 end;
	__u8 nh;
	int i;

	if (hl_load(ctx, xdp, off, &ip6, sizeof(ip6), frame_len) < 0) {
		r->flags |= HDRLOG_F_TRUNCATED;
		return;
	}
	r->ip_version = ip6.version;
	r->tos = (ip6.priority << 4) | (ip6.flow_lbl[0] >> 4);
	r->ttl = ip6.hop_limit;
	r->ip_total_length = sizeof(ip6) + bpf_ntohs(ip6.payload_len);
	__builtin_memcpy(r->src_ip, &ip6.saddr, 16);
	__builtin_memcpy(r->dst_ip, &ip6.daddr, 16);
	r->flags |= HDRLOG_F_IP;
	nh = ip6.nexthdr;
	r->ip_proto = nh;
	if (ip6.version != 6) {
		r->flags |= HDRLOG_F_ANOMALY;
		return;
	}
	end = hl_ip_end(r, off, r->ip_total_length, frame_len);
	off += sizeof(ip6);

#pragma unroll
	for (i = 0; i < HDRLOG_MAX_IPV6_EXT; i++) {
		switch (nh) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if (hl_load(ctx, xdp, off, b, 2, end) < 0)
				goto trunc;
			nh = b[0];
			off += ((__u32)b[1] + 1) * 8;
			break;
		case IPPROTO_AH: /* IPsec authentication header: length in 4-byte units, minus 2 */
			if (hl_load(ctx, xdp, off, b, 2, end) < 0)
				goto trunc;
			nh = b[0];
			off += ((__u32)b[1] + 2) * 4;
			break;
		case IPPROTO_FRAGMENT:
			if (hl_load(ctx, xdp, off, b, 8, end) < 0)
				goto trunc;
			nh = b[0];
			r->fragment_offset = (((__u16)b[2] << 8) | b[3]) >> 3;
			if (b[3] & 1)
				r->flags |= HDRLOG_F_MF;
			r->ip_id = ((__u32)b[4] << 24) | ((__u32)b[5] << 16) | ((__u32)b[6] << 8) | b[7];
			r->flags |= HDRLOG_F_IP_ID | HDRLOG_F_FRAG;
			off += 8;
			if (r->fragment_offset != 0) {
				r->ip_proto = nh;
				return; /* non-first fragment: no transport header */
			}
			break;
		default:
			r->ip_proto = nh;
			hl_parse_l4(ctx, xdp, r, off, end);
			return;
		}
	}
	/* chain deeper than we follow */
	r->ip_proto = nh;
trunc:
	r->flags |= HDRLOG_F_TRUNCATED;
}

/*
 * Parse a frame of `frame_len` bytes.  `tags` is 1 when the caller already
 * recorded a VLAN tag that the core or driver moved out of the packet (tc).
 */
static __always_inline void hl_parse_packet(void *ctx, const int xdp, struct hdrlog_record *r,
					    __u32 frame_len, __u32 tags)
{
	struct ethhdr eth;
	__u8 tag[4];
	__u16 proto;
	__u32 off = sizeof(eth);
	int i;

	if (hl_load(ctx, xdp, 0, &eth, sizeof(eth), frame_len) < 0) {
		r->flags |= HDRLOG_F_TRUNCATED;
		return;
	}
	__builtin_memcpy(r->dst_mac, eth.h_dest, 6);
	__builtin_memcpy(r->src_mac, eth.h_source, 6);
	proto = bpf_ntohs(eth.h_proto);

#pragma unroll
	for (i = 0; i < HDRLOG_MAX_VLAN; i++) {
		if (tags >= HDRLOG_MAX_VLAN || (proto != ETH_P_8021Q_ && proto != ETH_P_8021AD_))
			break;
		if (hl_load(ctx, xdp, off, tag, 4, frame_len) < 0) {
			r->ether_type = proto;
			r->flags |= HDRLOG_F_TRUNCATED;
			return;
		}
		if (r->vlan_count < 2) {
			r->vlan_ids[r->vlan_count & 1] = (((__u16)tag[0] << 8) | tag[1]) & 0x0fff;
			r->vlan_count++;
		}
		proto = ((__u16)tag[2] << 8) | tag[3];
		off += 4;
		tags++;
	}
	r->ether_type = proto;
	if (proto == ETH_P_8021Q_ || proto == ETH_P_8021AD_) {
		r->flags |= HDRLOG_F_TRUNCATED; /* a deeper VLAN stack than we follow */
		return;
	}
	if (proto == ETH_P_IP)
		hl_parse_ipv4(ctx, xdp, r, off, frame_len);
	else if (proto == ETH_P_IPV6)
		hl_parse_ipv6(ctx, xdp, r, off, frame_len);
}

#endif /* HDRLOG_PARSE_H */
