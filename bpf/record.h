/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * record.h -- the kernel/user ABI of hdrlog.
 *
 * One fixed-size struct hdrlog_record per captured packet is written into the
 * BPF ring buffer.  User space (producer/decode/layout.py) mirrors this layout
 * in one numpy dtype; tests/test_layout.py checks size and every offset
 * against the BTF of the compiled program, so the two cannot drift silently.
 *
 * Conventions: multi-byte integers are in host byte order (converted in the
 * kernel); addresses are raw network-order bytes (IPv4 in the first 4 bytes
 * of the 16); a field is meaningful only when its HDRLOG_F_* bit is set in
 * `flags`, otherwise it is null downstream.
 */
#ifndef HDRLOG_RECORD_H
#define HDRLOG_RECORD_H

#define HDRLOG_ABI_VERSION 2

/* direction */
#define HDRLOG_DIR_INGRESS 0
#define HDRLOG_DIR_EGRESS  1

/* flags: presence of optional groups, and booleans */
#define HDRLOG_F_IP         (1 << 0)  /* ip_version..ip_total_length, addresses */
#define HDRLOG_F_PORTS      (1 << 1)  /* src_port, dst_port */
#define HDRLOG_F_TCP        (1 << 2)  /* tcp_flags, tcp_seq, tcp_ack, tcp_window */
#define HDRLOG_F_ICMP       (1 << 3)  /* icmp_type, icmp_code */
#define HDRLOG_F_IP_ID      (1 << 4)  /* ip_id (IPv6: only with a fragment header) */
#define HDRLOG_F_FRAG       (1 << 5)  /* dont_fragment/more_fragments/fragment_offset */
#define HDRLOG_F_DF         (1 << 6)  /* IPv4 don't-fragment bit */
#define HDRLOG_F_MF         (1 << 7)  /* more-fragments bit */
#define HDRLOG_F_TRUNCATED  (1 << 8)  /* headers ended early; later fields absent */
#define HDRLOG_F_ANOMALY    (1 << 9)  /* a header lied (IHL<5, length beyond frame...) */
#define HDRLOG_F_ARP        (1 << 10) /* ARP: addresses are sender/target IPv4 */

/* per-CPU counters (index into the `counters` map) */
#define HDRLOG_C_SEEN          0 /* packets the hook saw */
#define HDRLOG_C_FILTERED      1 /* dropped by an in-kernel filter */
#define HDRLOG_C_SAMPLED_OUT   2 /* skipped by 1-in-N sampling */
#define HDRLOG_C_EMITTED       3 /* records written to the ring buffer */
#define HDRLOG_C_RB_FAIL       4 /* ring buffer full: record lost (counted) */
#define HDRLOG_C_PARSE_ANOMALY 5 /* packets flagged HDRLOG_F_ANOMALY (not in the invariant) */
#define HDRLOG_C_MAX           6

/* config map (index into the `config` array) */
#define HDRLOG_CFG_SAMPLE_RATE    0 /* 1-in-N; 0 or 1 = every packet */
#define HDRLOG_CFG_WAKEUP_RECORDS 1 /* wake the reader every N records per CPU */
#define HDRLOG_CFG_FILTER         2 /* HDRLOG_FILTER_* bits: which filters are active */
#define HDRLOG_CFG_MAX            3

/* config[HDRLOG_CFG_FILTER] bits */
#define HDRLOG_FILTER_INCLUDE  (1 << 0) /* some CIDR is an include rule */
#define HDRLOG_FILTER_PROTOS   (1 << 1) /* only listed IP protocols */
#define HDRLOG_FILTER_PORTS    (1 << 2) /* only listed ports (src or dst) */
#define HDRLOG_FILTER_DROP_L2  (1 << 3) /* drop frames that are not IP */

/* value of the cidr4/cidr6 tries: the longest matching prefix decides */
#define HDRLOG_CIDR_INCLUDE 1
#define HDRLOG_CIDR_EXCLUDE 2

struct hdrlog_cidr4_key {
	__u32 prefixlen;
	__u8  addr[4];
};

struct hdrlog_cidr6_key {
	__u32 prefixlen;
	__u8  addr[16];
};

struct hdrlog_record {
	__u64 ts_ns;            /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 ifindex;
	__u32 pkt_len;          /* skb->len, plus 4 for a tag offloaded to the skb */
	__u32 tcp_seq;
	__u32 tcp_ack;
	__u32 ip_id;            /* IPv4 identification / IPv6 fragment id */
	__u32 sample_rate;      /* 1-in-N in force when captured */
	__u8  src_ip[16];
	__u8  dst_ip[16];
	__u8  src_mac[6];
	__u8  dst_mac[6];
	__u16 vlan_ids[2];      /* outer first; the skb's offloaded tag is outer */
	__u16 ether_type;       /* after VLAN tags */
	__u16 ip_total_length;  /* IPv4 total length / IPv6 40 + payload length */
	__u16 fragment_offset;  /* in 8-byte units, as on the wire */
	__u16 src_port;
	__u16 dst_port;
	__u16 tcp_window;
	__u16 tcp_flags;        /* 9 bits: FIN=0x01 ... CWR=0x80, AE(NS)=0x100 */
	__u16 gso_segments;     /* wire packets this skb stands for (>= 1) */
	__u16 flags;            /* HDRLOG_F_* */
	__u8  direction;        /* HDRLOG_DIR_* */
	__u8  ip_version;       /* 4 or 6 */
	__u8  ip_proto;         /* IPv6: upper layer after extension headers */
	__u8  ttl;              /* IPv6: hop limit */
	__u8  tos;              /* DSCP << 2 | ECN */
	__u8  icmp_type;
	__u8  icmp_code;
	__u8  vlan_count;       /* 0..2 */
	__u8  _pad[2];          /* explicit: no hidden padding */
	/* identity: (capture, cpu, seq) names one record for ever.  The capture is the
	 * loaded program (user space names it); seq counts the records this CPU wrote
	 * into the ring buffer, from 0, without gaps (HDRLOG_C_EMITTED before the write). */
	__u32 cpu;              /* bpf_get_smp_processor_id() */
	__u64 seq;
};                              /* sizeof == 120: 128 bytes a ring-buffer slot */

#endif /* HDRLOG_RECORD_H */
