/* SPDX-License-Identifier: Apache-2.0
 *
 * The consumer's columnar renderer: the text columns an output format needs,
 * and NDJSON written from Arrow columns, with no Python object per event.
 *
 * Text columns.  Each function takes columns as the compiled reader leaves
 * them (producer/consumer/reader.py: int64 offsets and lengths into the
 * message buffer, a uint8 presence flag) and returns an Arrow string column
 * as three buffers: (data, int32 offsets, uint8 valid).  What they write is
 * what the dict path writes for the same record (producer/consumer/mapping.py
 * and community_id.py are the reference; tests/test_render.py holds them to
 * it); a value the dict path would refuse raises ValueError, and the caller
 * lets the dict path decide (it raises the MappingError).
 *
 *   strings         Avro strings (validated as UTF-8 by Python's own decoder)
 *   ip_texts        4 or 16 bytes -> dotted quad, or RFC 5952 text as Python's ipaddress writes it
 *   mac_texts       6 bytes -> hex pairs joined by `sep`, upper or lower case
 *   time_texts      ns since the epoch -> YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ (UTC)
 *   event_ids       sha256(host \0 capture_id \0 cpu \0 seq), 16 bytes as hex (mapping.event_id)
 *   community_ids   Community ID v1 (community_id.py), "1:" + base64(sha1)
 *   lookup          texts from a table, by index
 *
 * NDJSON.  `ndjson(plan, keys, leaves, n)` writes one JSON object per row
 * from a plan of instructions (op, key, leaf):  OPEN key (an object),
 * CLOSE, LEAF key leaf.  A leaf is an Arrow array given by its buffers: int64,
 * bool, string or list<string>.  A null leaf is left out, and so is an object
 * none of whose members is written (absent, never null: what mapping.present
 * does).  Strings are escaped as orjson escapes them, so the line is the one
 * orjson.dumps writes for the event's dict (tests/test_render.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
/* SHA1_ and SHA256_Init/Update/Final are deprecated in OpenSSL 3 in favour of EVP, whose
 * provider dispatch costs ~0.3 us a call (and the one-shot SHA256() ~1 us, a fetch each time)
 * against ~0.05 us for a 64-byte input here: the consumer hashes every record, so it calls the
 * implementations directly.  They are in every OpenSSL 3 release. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/evp.h> /* EVP_EncodeBlock: base64 */
#include <openssl/sha.h>

/* -- a growable output buffer -------------------------------------------------------------- */

typedef struct {
	char *p;
	Py_ssize_t len, cap;
} out;

static int grow(out *o, Py_ssize_t need)
{
	if (o->len + need <= o->cap)
		return 0;
	Py_ssize_t cap = o->cap ? o->cap : 4096;
	while (cap < o->len + need)
		cap *= 2;
	char *p = PyMem_Realloc(o->p, (size_t)cap);
	if (!p) {
		PyErr_NoMemory();
		return -1;
	}
	o->p = p;
	o->cap = cap;
	return 0;
}

static inline void put(out *o, const void *s, Py_ssize_t n)
{
	memcpy(o->p + o->len, s, (size_t)n);
	o->len += n;
}

static inline int put_checked(out *o, const void *s, Py_ssize_t n)
{
	if (grow(o, n) < 0)
		return -1;
	put(o, s, n);
	return 0;
}

/* decimal text of v into s (at least 21 bytes); returns its length */
static int itoa64(int64_t v, char *s)
{
	char tmp[24];
	int n = 0, len = 0;
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		s[len++] = '-';
	while (n)
		s[len++] = tmp[--n];
	return len;
}

/* -- a text column: data, offsets, valid ------------------------------------------------- */

typedef struct {
	out data;
	int32_t *offsets;
	uint8_t *valid;
	Py_ssize_t n;
} column;

/* idempotent: every function frees its column at its end, whatever happened */
static void column_free(column *c)
{
	PyMem_Free(c->data.p);
	PyMem_Free(c->offsets);
	PyMem_Free(c->valid);
	memset(c, 0, sizeof(*c));
}

static int column_init(column *c, Py_ssize_t n)
{
	memset(c, 0, sizeof(*c));
	c->n = n;
	c->offsets = PyMem_Calloc((size_t)n + 1, sizeof(int32_t));
	c->valid = PyMem_Calloc((size_t)n + 1, 1);
	if (!c->offsets || !c->valid) {
		column_free(c);
		PyErr_NoMemory();
		return -1;
	}
	return 0;
}

/* row i is done: valid or not, with whatever was written since row i began */
static int column_end_row(column *c, Py_ssize_t i, int valid)
{
	if (c->data.len > INT32_MAX) {
		PyErr_SetString(PyExc_ValueError, "render: a text column over 2 GiB");
		return -1;
	}
	c->valid[i] = (uint8_t)valid;
	c->offsets[i + 1] = (int32_t)c->data.len;
	return 0;
}

static PyObject *column_result(column *c)
{
	PyObject *r = Py_BuildValue("y#y#y#", c->data.p ? c->data.p : "", c->data.len, (const char *)c->offsets,
				    (Py_ssize_t)((c->n + 1) * (Py_ssize_t)sizeof(int32_t)), (const char *)c->valid, c->n);
	column_free(c);
	return r;
}

static PyObject *row_error(Py_ssize_t i, const char *what)
{
	PyErr_Format(PyExc_ValueError, "row %zd: %s", i, what);
	return NULL;
}

/* every input array must hold n items of its width */
static int sized(Py_buffer *b, Py_ssize_t n, Py_ssize_t width, const char *name)
{
	if (b->len < n * width) {
		PyErr_Format(PyExc_ValueError, "render: %s holds fewer than %zd items", name, n);
		return -1;
	}
	return 0;
}

static int span_ok(Py_buffer *buf, int64_t off, int64_t len)
{
	return off >= 0 && len >= 0 && off <= buf->len && len <= buf->len - off;
}

/* The text of one present value of a bytes/string column: append it to c (or fail: -1, with
 * `why` set for a value the dict path must judge, or a Python error set). */
typedef int (*span_text)(column *c, const uint8_t *s, int64_t len, const char **why, void *state);

/* (buf, off, len, present, n): each present row's span through `text` */
static PyObject *span_texts(PyObject *args, span_text text, void *state)
{
	Py_buffer buf = {0}, off = {0}, len = {0}, present = {0};
	Py_ssize_t n;
	PyObject *result = NULL;
	column c = {0};
	if (!PyArg_ParseTuple(args, "y*y*y*y*n", &buf, &off, &len, &present, &n))
		return NULL;
	if (sized(&off, n, 8, "off") || sized(&len, n, 8, "len") || sized(&present, n, 1, "present") ||
	    column_init(&c, n) < 0)
		goto done;
	const int64_t *o = off.buf, *l = len.buf;
	const uint8_t *p = present.buf;
	for (Py_ssize_t i = 0; i < n; i++) {
		if (p[i]) {
			const char *why = NULL;
			if (!span_ok(&buf, o[i], l[i])) {
				result = row_error(i, "a value outside the buffer");
				goto done;
			}
			if (text(&c, (const uint8_t *)buf.buf + o[i], l[i], &why, state) < 0) {
				if (why)
					result = row_error(i, why);
				goto done;
			}
		}
		if (column_end_row(&c, i, p[i] != 0) < 0)
			goto done;
	}
	result = column_result(&c);
done:
	column_free(&c);
	PyBuffer_Release(&buf);
	PyBuffer_Release(&off);
	PyBuffer_Release(&len);
	PyBuffer_Release(&present);
	return result;
}

/* the last string validated, so a column of repeated values is decoded once */
typedef struct {
	const uint8_t *last;
	int64_t last_len;
} utf8_state;

static int string_text(column *c, const uint8_t *s, int64_t len, const char **why, void *state)
{
	utf8_state *st = state;
	if (!(st->last_len == len && memcmp(st->last, s, (size_t)len) == 0)) {
		PyObject *u = PyUnicode_DecodeUTF8((const char *)s, len, NULL);
		if (!u) {
			PyErr_Clear();
			*why = "a string that is not UTF-8";
			return -1;
		}
		Py_DECREF(u);
		st->last = s;
		st->last_len = len;
	}
	return put_checked(&c->data, s, len);
}

/* strings(buf, off, len, present, n): Avro strings, validated as UTF-8 by Python's decoder */
static PyObject *strings(PyObject *self, PyObject *args)
{
	utf8_state st = {NULL, -1};
	(void)self;
	return span_texts(args, string_text, &st);
}

static const char HEX[] = "0123456789abcdef";

/* RFC 5952 as CPython's ipaddress writes it: lower-case hextets without leading zeros, the
 * longest run (the first of equals) of two or more zero hextets as "::", no dotted quad */
static int ipv6_text(const uint8_t *a, char *s)
{
	unsigned h[8];
	int best = -1, best_len = 0, len = 0;
	for (int k = 0; k < 8; k++)
		h[k] = (unsigned)a[2 * k] << 8 | a[2 * k + 1];
	for (int k = 0; k < 8;) {
		if (h[k]) {
			k++;
			continue;
		}
		int j = k;
		while (j < 8 && !h[j])
			j++;
		if (j - k > best_len) {
			best = k;
			best_len = j - k;
		}
		k = j;
	}
	if (best_len < 2)
		best = -1;
	for (int k = 0; k < 8; k++) {
		if (k == best) {
			s[len++] = ':';
			s[len++] = ':';
			k += best_len - 1;
			continue;
		}
		if (k && !(best >= 0 && k == best + best_len))
			s[len++] = ':';
		unsigned v = h[k];
		int started = 0;
		for (int shift = 12; shift >= 0; shift -= 4) {
			unsigned d = (v >> shift) & 0xF;
			if (d || started || shift == 0) {
				s[len++] = HEX[d];
				started = 1;
			}
		}
	}
	return len;
}

static int ipv4_text(const uint8_t *a, char *s)
{
	int len = 0;
	for (int k = 0; k < 4; k++) {
		if (k)
			s[len++] = '.';
		len += itoa64(a[k], s + len);
	}
	return len;
}

static int ip_text(column *c, const uint8_t *a, int64_t len, const char **why, void *state)
{
	(void)state;
	if (len != 4 && len != 16) {
		*why = "an IP address of neither 4 nor 16 bytes";
		return -1;
	}
	if (grow(&c->data, 48) < 0)
		return -1;
	c->data.len += len == 4 ? ipv4_text(a, c->data.p + c->data.len) : ipv6_text(a, c->data.p + c->data.len);
	return 0;
}

/* ip_texts(buf, off, len, present, n) */
static PyObject *ip_texts(PyObject *self, PyObject *args)
{
	(void)self;
	return span_texts(args, ip_text, NULL);
}

/* mac_texts(buf, off, n, upper, sep): 6 bytes at each offset (a fixed field, never null) */
static PyObject *mac_texts(PyObject *self, PyObject *args)
{
	Py_buffer buf = {0}, off = {0};
	Py_ssize_t n;
	int upper, sep;
	PyObject *result = NULL;
	column c = {0};
	(void)self;
	if (!PyArg_ParseTuple(args, "y*y*npC", &buf, &off, &n, &upper, &sep))
		return NULL;
	if (sized(&off, n, 8, "off") || column_init(&c, n) < 0)
		goto done;
	const char *digits = upper ? "0123456789ABCDEF" : HEX;
	const int64_t *o = off.buf;
	for (Py_ssize_t i = 0; i < n; i++) {
		if (!span_ok(&buf, o[i], 6)) {
			result = row_error(i, "MAC outside the buffer");
			goto done;
		}
		if (grow(&c.data, 17) < 0)
			goto done;
		const uint8_t *a = (const uint8_t *)buf.buf + o[i];
		char *s = c.data.p + c.data.len;
		for (int k = 0; k < 6; k++) {
			if (k)
				*s++ = (char)sep;
			*s++ = digits[a[k] >> 4];
			*s++ = digits[a[k] & 0xF];
		}
		c.data.len += 17;
		if (column_end_row(&c, i, 1) < 0)
			goto done;
	}
	result = column_result(&c);
done:
	column_free(&c);
	PyBuffer_Release(&buf);
	PyBuffer_Release(&off);
	return result;
}

static void digits(char *s, int64_t v, int width)
{
	for (int k = width - 1; k >= 0; k--) {
		s[k] = (char)('0' + v % 10);
		v /= 10;
	}
}

/* time_texts(ns, n): years 1000-9999 only (the dict path decides the others) */
static PyObject *time_texts(PyObject *self, PyObject *args)
{
	Py_buffer ns = {0};
	Py_ssize_t n;
	PyObject *result = NULL;
	column c = {0};
	(void)self;
	if (!PyArg_ParseTuple(args, "y*n", &ns, &n))
		return NULL;
	if (sized(&ns, n, 8, "ns") || column_init(&c, n) < 0)
		goto done;
	const int64_t *t = ns.buf;
	int64_t last_sec = INT64_MIN;
	char head[20];
	for (Py_ssize_t i = 0; i < n; i++) {
		int64_t sec = t[i] / 1000000000, frac = t[i] % 1000000000;
		if (frac < 0) {
			frac += 1000000000;
			sec -= 1;
		}
		if (sec != last_sec) {
			time_t tt = (time_t)sec;
			struct tm tm;
			if (!gmtime_r(&tt, &tm) || tm.tm_year + 1900 < 1000 || tm.tm_year + 1900 > 9999) {
				result = row_error(i, "a time outside the years 1000-9999");
				goto done;
			}
			digits(head, tm.tm_year + 1900, 4);
			head[4] = '-';
			digits(head + 5, tm.tm_mon + 1, 2);
			head[7] = '-';
			digits(head + 8, tm.tm_mday, 2);
			head[10] = 'T';
			digits(head + 11, tm.tm_hour, 2);
			head[13] = ':';
			digits(head + 14, tm.tm_min, 2);
			head[16] = ':';
			digits(head + 17, tm.tm_sec, 2);
			head[19] = '.';
			last_sec = sec;
		}
		if (grow(&c.data, 30) < 0)
			goto done;
		char *s = c.data.p + c.data.len;
		memcpy(s, head, 20);
		digits(s + 20, frac, 9);
		s[29] = 'Z';
		c.data.len += 30;
		if (column_end_row(&c, i, 1) < 0)
			goto done;
	}
	result = column_result(&c);
done:
	column_free(&c);
	PyBuffer_Release(&ns);
	return result;
}

/* event_ids(buf, host_off, host_len, cap_off, cap_len, cpu, seq, n) */
static PyObject *event_ids(PyObject *self, PyObject *args)
{
	Py_buffer buf = {0}, ho = {0}, hl = {0}, co = {0}, cl = {0}, cpu = {0}, seq = {0};
	Py_ssize_t n;
	PyObject *result = NULL;
	column c = {0};
	char *key = NULL;
	Py_ssize_t key_cap = 0;
	(void)self;
	if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*n", &buf, &ho, &hl, &co, &cl, &cpu, &seq, &n))
		return NULL;
	if (sized(&ho, n, 8, "host_off") || sized(&hl, n, 8, "host_len") || sized(&co, n, 8, "cap_off") ||
	    sized(&cl, n, 8, "cap_len") || sized(&cpu, n, 8, "cpu") || sized(&seq, n, 8, "seq") ||
	    column_init(&c, n) < 0)
		goto done;
	const int64_t *hof = ho.buf, *hln = hl.buf, *cof = co.buf, *cln = cl.buf, *cp = cpu.buf, *sq = seq.buf;
	for (Py_ssize_t i = 0; i < n; i++) {
		if (!span_ok(&buf, hof[i], hln[i]) || !span_ok(&buf, cof[i], cln[i])) {
			result = row_error(i, "identity outside the buffer");
			goto done;
		}
		Py_ssize_t need = hln[i] + cln[i] + 48;
		if (need > key_cap) {
			char *k = PyMem_Realloc(key, (size_t)need);
			if (!k) {
				PyErr_NoMemory();
				goto done;
			}
			key = k;
			key_cap = need;
		}
		Py_ssize_t kl = 0;
		memcpy(key, (const char *)buf.buf + hof[i], (size_t)hln[i]);
		kl += hln[i];
		key[kl++] = 0;
		memcpy(key + kl, (const char *)buf.buf + cof[i], (size_t)cln[i]);
		kl += cln[i];
		key[kl++] = 0;
		kl += itoa64(cp[i], key + kl);
		key[kl++] = 0;
		kl += itoa64(sq[i], key + kl);
		unsigned char md[SHA256_DIGEST_LENGTH];
		SHA256_CTX sha;
		if (!SHA256_Init(&sha) || !SHA256_Update(&sha, key, (size_t)kl) || !SHA256_Final(md, &sha)) {
			result = row_error(i, "sha256 failed");
			goto done;
		}
		if (grow(&c.data, 32) < 0)
			goto done;
		char *s = c.data.p + c.data.len;
		for (int k = 0; k < 16; k++) {
			s[2 * k] = HEX[md[k] >> 4];
			s[2 * k + 1] = HEX[md[k] & 0xF];
		}
		c.data.len += 32;
		if (column_end_row(&c, i, 1) < 0)
			goto done;
	}
	result = column_result(&c);
done:
	column_free(&c);
	PyMem_Free(key);
	PyBuffer_Release(&buf);
	PyBuffer_Release(&ho);
	PyBuffer_Release(&hl);
	PyBuffer_Release(&co);
	PyBuffer_Release(&cl);
	PyBuffer_Release(&cpu);
	PyBuffer_Release(&seq);
	return result;
}

enum { ICMP = 1, TCP = 6, UDP = 17, ICMPV6 = 58, SCTP = 132 };

/* the flows of a block repeat: the last Community IDs, by the bytes they hash (direct-mapped) */
#define FLOW_CACHE 256
#define FLOW_DATA (2 + 32 + 2 + 4)
#define FLOW_TEXT (2 + 28)

typedef struct {
	uint8_t len;
	uint8_t data[FLOW_DATA];
	char text[FLOW_TEXT];
} flow_entry;

static unsigned flow_slot(const uint8_t *data, Py_ssize_t len)
{
	uint32_t h = 2166136261u;
	for (Py_ssize_t k = 0; k < len; k++)
		h = (h ^ data[k]) * 16777619u;
	return (h ^ (h >> 16)) % FLOW_CACHE;
}

static int icmp_counterpart(int64_t proto, int64_t type)
{
	static const int v4[][2] = {{8, 0}, {0, 8}, {13, 14}, {14, 13}, {15, 16}, {16, 15}, {10, 9}, {9, 10}, {17, 18},
				    {18, 17}};
	static const int v6[][2] = {{128, 129}, {129, 128}, {130, 131}, {131, 130}, {133, 134}, {134, 133},
				    {135, 136}, {136, 135}, {139, 140}, {140, 139}, {144, 145}, {145, 144}};
	const int(*t)[2] = proto == ICMP ? v4 : v6;
	int len = proto == ICMP ? 10 : 12;
	for (int k = 0; k < len; k++)
		if (t[k][0] == type)
			return t[k][1];
	return -1;
}

/* community_ids(buf, proto, proto_present, src_off, src_len, src_present, dst_off, dst_len, dst_present,
 *               a, a_present, b, b_present, n):  a/b are the ports, or ICMP type/code (mapping.flow_hash) */
static PyObject *community_ids(PyObject *self, PyObject *args)
{
	Py_buffer buf = {0}, pr = {0}, prp = {0}, so = {0}, sl = {0}, sp = {0}, dof = {0}, dl = {0}, dp = {0}, a = {0},
		  ap = {0}, b = {0}, bp = {0};
	Py_ssize_t n;
	PyObject *result = NULL;
	column c = {0};
	flow_entry *cache = NULL;
	(void)self;
	if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*y*y*n", &buf, &pr, &prp, &so, &sl, &sp, &dof, &dl, &dp, &a,
			      &ap, &b, &bp, &n))
		return NULL;
	cache = PyMem_Calloc(FLOW_CACHE, sizeof(flow_entry));
	if (!cache) {
		PyErr_NoMemory();
		goto done;
	}
	if (sized(&pr, n, 8, "proto") || sized(&prp, n, 1, "proto_present") || sized(&so, n, 8, "src_off") ||
	    sized(&sl, n, 8, "src_len") || sized(&sp, n, 1, "src_present") || sized(&dof, n, 8, "dst_off") ||
	    sized(&dl, n, 8, "dst_len") || sized(&dp, n, 1, "dst_present") || sized(&a, n, 8, "a") ||
	    sized(&ap, n, 1, "a_present") || sized(&b, n, 8, "b") || sized(&bp, n, 1, "b_present") ||
	    column_init(&c, n) < 0)
		goto done;
	const int64_t *P = pr.buf, *SO = so.buf, *SL = sl.buf, *DO = dof.buf, *DL = dl.buf, *A = a.buf, *B = b.buf;
	const uint8_t *PP = prp.buf, *SP = sp.buf, *DP = dp.buf, *AP = ap.buf, *BP = bp.buf;
	for (Py_ssize_t i = 0; i < n; i++) {
		if (!PP[i] || !SP[i] || !DP[i] || SL[i] != DL[i]) {
			if (column_end_row(&c, i, 0) < 0)
				goto done;
			continue;
		}
		if (!span_ok(&buf, SO[i], SL[i]) || !span_ok(&buf, DO[i], DL[i]) || SL[i] > 16 || P[i] < 0 || P[i] > 255) {
			result = row_error(i, "a flow the renderer does not take");
			goto done;
		}
		const uint8_t *src = (const uint8_t *)buf.buf + SO[i], *dst = (const uint8_t *)buf.buf + DO[i];
		int64_t proto = P[i], sport = A[i], dport = B[i];
		int has_sport = AP[i], has_dport = BP[i], one_way = 0;
		if ((proto == ICMP || proto == ICMPV6) && has_sport) {
			int counterpart = icmp_counterpart(proto, sport);
			if (counterpart < 0) {
				one_way = 1;
				dport = has_dport ? dport : 0;
			} else {
				dport = counterpart;
			}
			has_dport = 1;
		} else if ((proto != TCP && proto != UDP && proto != SCTP) || !has_sport || !has_dport) {
			has_sport = has_dport = 0;
		}
		if (has_sport && (sport < 0 || sport > 0xFFFF || dport < 0 || dport > 0xFFFF)) {
			result = row_error(i, "a port outside 0-65535");
			goto done;
		}
		int64_t s0 = has_sport ? sport : 0, d0 = has_dport ? dport : 0;
		int cmp = memcmp(src, dst, (size_t)SL[i]);
		if (!one_way && (cmp > 0 || (cmp == 0 && s0 > d0))) {
			const uint8_t *t = src;
			src = dst;
			dst = t;
			int64_t tp = sport;
			sport = dport;
			dport = tp;
		}
		uint8_t data[FLOW_DATA];
		Py_ssize_t len = 0;
		data[len++] = 0;
		data[len++] = 0;
		memcpy(data + len, src, (size_t)SL[i]);
		len += SL[i];
		memcpy(data + len, dst, (size_t)SL[i]);
		len += SL[i];
		data[len++] = (uint8_t)proto;
		data[len++] = 0;
		if (has_sport && has_dport) {
			data[len++] = (uint8_t)(sport >> 8);
			data[len++] = (uint8_t)sport;
			data[len++] = (uint8_t)(dport >> 8);
			data[len++] = (uint8_t)dport;
		}
		flow_entry *e = &cache[flow_slot(data, len)];
		if (e->len != len || memcmp(e->data, data, (size_t)len) != 0) {
			unsigned char md[SHA_DIGEST_LENGTH];
			SHA_CTX sha;
			if (!SHA1_Init(&sha) || !SHA1_Update(&sha, data, (size_t)len) || !SHA1_Final(md, &sha)) {
				result = row_error(i, "sha1 failed");
				goto done;
			}
			unsigned char b64[FLOW_TEXT - 2 + 1]; /* EVP_EncodeBlock ends with a NUL */
			if (EVP_EncodeBlock(b64, md, SHA_DIGEST_LENGTH) != FLOW_TEXT - 2) {
				result = row_error(i, "base64 failed");
				goto done;
			}
			e->text[0] = '1';
			e->text[1] = ':';
			memcpy(e->text + 2, b64, FLOW_TEXT - 2);
			e->len = (uint8_t)len;
			memcpy(e->data, data, (size_t)len);
		}
		if (put_checked(&c.data, e->text, FLOW_TEXT) < 0)
			goto done;
		if (column_end_row(&c, i, 1) < 0)
			goto done;
	}
	result = column_result(&c);
done:
	column_free(&c);
	PyMem_Free(cache);
	PyBuffer_Release(&buf);
	PyBuffer_Release(&pr);
	PyBuffer_Release(&prp);
	PyBuffer_Release(&so);
	PyBuffer_Release(&sl);
	PyBuffer_Release(&sp);
	PyBuffer_Release(&dof);
	PyBuffer_Release(&dl);
	PyBuffer_Release(&dp);
	PyBuffer_Release(&a);
	PyBuffer_Release(&ap);
	PyBuffer_Release(&b);
	PyBuffer_Release(&bp);
	return result;
}

/* lookup(index, valid, table, n): table[index[i]] where valid (a list of bytes) */
static PyObject *lookup(PyObject *self, PyObject *args)
{
	Py_buffer idx = {0}, valid = {0};
	PyObject *table, *result = NULL;
	Py_ssize_t n;
	column c = {0};
	(void)self;
	if (!PyArg_ParseTuple(args, "y*y*O!n", &idx, &valid, &PyList_Type, &table, &n))
		return NULL;
	if (sized(&idx, n, 8, "index") || sized(&valid, n, 1, "valid") || column_init(&c, n) < 0)
		goto done;
	const int64_t *ix = idx.buf;
	const uint8_t *v = valid.buf;
	Py_ssize_t size = PyList_GET_SIZE(table);
	for (Py_ssize_t k = 0; k < size; k++)
		if (!PyBytes_Check(PyList_GET_ITEM(table, k))) {
			result = row_error(k, "lookup: the table holds bytes");
			goto done;
		}
	for (Py_ssize_t i = 0; i < n; i++) {
		if (v[i]) {
			if (ix[i] < 0 || ix[i] >= size) {
				result = row_error(i, "lookup: an index outside the table");
				goto done;
			}
			PyObject *t = PyList_GET_ITEM(table, ix[i]);
			if (put_checked(&c.data, PyBytes_AS_STRING(t), PyBytes_GET_SIZE(t)) < 0)
				goto done;
		}
		if (column_end_row(&c, i, v[i] != 0) < 0)
			goto done;
	}
	result = column_result(&c);
done:
	column_free(&c);
	PyBuffer_Release(&idx);
	PyBuffer_Release(&valid);
	return result;
}

/* -- NDJSON from Arrow columns ------------------------------------------------------------- */

enum { J_OPEN = 1, J_CLOSE, J_LEAF };
enum { L_INT64 = 1, L_BOOL, L_STRING, L_LIST_STRING };
#define MAX_DEPTH 16
#define MAX_LEAVES 256

typedef struct {
	int kind;
	Py_buffer bufs[4]; /* validity (may be empty: no nulls), then the kind's buffers */
	int held;
} leaf;

static inline int bit(const uint8_t *bits, Py_ssize_t i)
{
	return (bits[i >> 3] >> (i & 7)) & 1;
}

/* orjson's escaping: " \ and control characters; \b \t \n \f \r short, the rest \u00xx */
static int put_string(out *o, const char *s, Py_ssize_t n)
{
	if (grow(o, 2 + 6 * n) < 0)
		return -1;
	char *d = o->p + o->len;
	*d++ = '"';
	for (Py_ssize_t k = 0; k < n; k++) {
		unsigned char ch = (unsigned char)s[k];
		if (ch >= 0x20 && ch != '"' && ch != '\\') {
			Py_ssize_t j = k + 1;
			while (j < n && (unsigned char)s[j] >= 0x20 && s[j] != '"' && s[j] != '\\')
				j++;
			memcpy(d, s + k, (size_t)(j - k));
			d += j - k;
			k = j - 1;
			continue;
		}
		*d++ = '\\';
		switch (ch) {
		case '"': *d++ = '"'; break;
		case '\\': *d++ = '\\'; break;
		case '\b': *d++ = 'b'; break;
		case '\t': *d++ = 't'; break;
		case '\n': *d++ = 'n'; break;
		case '\f': *d++ = 'f'; break;
		case '\r': *d++ = 'r'; break;
		default:
			*d++ = 'u';
			*d++ = '0';
			*d++ = '0';
			*d++ = HEX[ch >> 4];
			*d++ = HEX[ch & 0xF];
		}
	}
	*d++ = '"';
	o->len = d - o->p;
	return 0;
}

static int leaf_valid(const leaf *l, Py_ssize_t i)
{
	return l->bufs[0].len == 0 || bit(l->bufs[0].buf, i);
}

/* the value of leaf l at row i; returns -1 on error */
static int put_leaf(out *o, const leaf *l, Py_ssize_t i)
{
	switch (l->kind) {
	case L_INT64: {
		if (grow(o, 24) < 0)
			return -1;
		o->len += itoa64(((const int64_t *)l->bufs[1].buf)[i], o->p + o->len);
		return 0;
	}
	case L_BOOL:
		return bit(l->bufs[1].buf, i) ? put_checked(o, "true", 4) : put_checked(o, "false", 5);
	case L_STRING: {
		const int32_t *off = l->bufs[1].buf;
		return put_string(o, (const char *)l->bufs[2].buf + off[i], off[i + 1] - off[i]);
	}
	case L_LIST_STRING: {
		const int32_t *lo = l->bufs[1].buf, *so = l->bufs[2].buf;
		if (put_checked(o, "[", 1) < 0)
			return -1;
		for (int32_t k = lo[i]; k < lo[i + 1]; k++) {
			if (k > lo[i] && put_checked(o, ",", 1) < 0)
				return -1;
			if (put_string(o, (const char *)l->bufs[3].buf + so[k], so[k + 1] - so[k]) < 0)
				return -1;
		}
		return put_checked(o, "]", 1);
	}
	}
	return -1;
}

/* the buffers must hold what n rows read: checked once, so the loop reads within them */
static int leaf_check(const leaf *l, Py_ssize_t n)
{
	if (l->bufs[0].len && l->bufs[0].len < (n + 7) / 8)
		return -1;
	switch (l->kind) {
	case L_INT64:
		return l->bufs[1].len >= n * 8 ? 0 : -1;
	case L_BOOL:
		return l->bufs[1].len >= (n + 7) / 8 ? 0 : -1;
	case L_STRING: {
		if (l->bufs[1].len < (n + 1) * 4)
			return -1;
		const int32_t *off = l->bufs[1].buf;
		for (Py_ssize_t i = 0; i < n; i++)
			if (off[i] < 0 || off[i] > off[i + 1] || off[i + 1] > l->bufs[2].len)
				return -1;
		return 0;
	}
	case L_LIST_STRING: {
		if (l->bufs[1].len < (n + 1) * 4)
			return -1;
		const int32_t *lo = l->bufs[1].buf, *so = l->bufs[2].buf;
		Py_ssize_t items = l->bufs[2].len / 4 - 1;
		for (Py_ssize_t i = 0; i < n; i++)
			if (lo[i] < 0 || lo[i] > lo[i + 1] || lo[i + 1] > items)
				return -1;
		for (Py_ssize_t k = 0; k < items; k++)
			if (so[k] < 0 || so[k] > so[k + 1] || so[k + 1] > l->bufs[3].len)
				return -1;
		return 0;
	}
	}
	return -1;
}

/* ndjson(plan, keys, leaves, n) -> (text, ends): plan int64 triples (op, key, leaf); keys a list of
 * bytes (each `"name":`); leaves a list of (kind, validity, buffers...) */
static PyObject *ndjson(PyObject *self, PyObject *args)
{
	Py_buffer plan = {0};
	PyObject *keys, *leaves, *result = NULL;
	Py_ssize_t n, n_leaves = 0;
	leaf L[MAX_LEAVES];
	out o = {0};
	int64_t *ends = NULL;
	(void)self;
	if (!PyArg_ParseTuple(args, "y*O!O!n", &plan, &PyList_Type, &keys, &PyList_Type, &leaves, &n))
		return NULL;
	memset(L, 0, sizeof(L));
	if (PyList_GET_SIZE(leaves) > MAX_LEAVES || plan.len % 24) {
		PyErr_SetString(PyExc_ValueError, "ndjson: too many leaves or a malformed plan");
		goto done;
	}
	for (; n_leaves < PyList_GET_SIZE(leaves); n_leaves++) {
		leaf *l = &L[n_leaves];
		PyObject *t = PyList_GET_ITEM(leaves, n_leaves);
		if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 3 || PyTuple_GET_SIZE(t) > 5) {
			PyErr_SetString(PyExc_ValueError, "ndjson: a leaf is (kind, validity, buffers...)");
			goto done;
		}
		l->kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 0));
		for (Py_ssize_t k = 1; k < PyTuple_GET_SIZE(t); k++) {
			PyObject *b = PyTuple_GET_ITEM(t, k);
			if (b == Py_None)
				continue;
			if (PyObject_GetBuffer(b, &l->bufs[k - 1], PyBUF_SIMPLE) < 0)
				goto done;
			l->held |= 1 << (k - 1);
		}
		int want = l->kind == L_LIST_STRING ? 5 : l->kind == L_STRING ? 4 : 3;
		if (PyTuple_GET_SIZE(t) != want || leaf_check(l, n) < 0) {
			PyErr_Format(PyExc_ValueError, "ndjson: leaf %zd does not hold %zd rows of its kind", n_leaves, n);
			goto done;
		}
	}
	const int64_t *ins = plan.buf;
	Py_ssize_t n_ins = plan.len / 24, n_keys = PyList_GET_SIZE(keys);
	int depth = 0;
	for (Py_ssize_t k = 0; k < n_ins; k++) {
		int64_t op = ins[3 * k], key = ins[3 * k + 1], lf = ins[3 * k + 2];
		depth += op == J_OPEN ? 1 : op == J_CLOSE ? -1 : 0;
		if ((op != J_CLOSE && (key < 0 || key >= n_keys || !PyBytes_Check(PyList_GET_ITEM(keys, key)))) ||
		    (op == J_LEAF && (lf < 0 || lf >= n_leaves)) || op < J_OPEN || op > J_LEAF || depth < 0 ||
		    depth >= MAX_DEPTH) {
			PyErr_Format(PyExc_ValueError, "ndjson: instruction %zd is malformed", k);
			goto done;
		}
	}
	if (depth) {
		PyErr_SetString(PyExc_ValueError, "ndjson: unbalanced objects");
		goto done;
	}
	ends = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int64_t));
	if (!ends) {
		PyErr_NoMemory();
		goto done;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		Py_ssize_t mark[MAX_DEPTH];
		int count[MAX_DEPTH];
		int d = 0;
		count[0] = 0;
		if (put_checked(&o, "{", 1) < 0)
			goto done;
		for (Py_ssize_t k = 0; k < n_ins; k++) {
			int64_t op = ins[3 * k];
			if (op == J_CLOSE) {
				if (count[d] == 0) {
					o.len = mark[d]; /* nothing inside: the object is left out */
					d--;
				} else {
					if (put_checked(&o, "}", 1) < 0)
						goto done;
					d--;
					count[d]++;
				}
				continue;
			}
			if (op == J_LEAF && !leaf_valid(&L[ins[3 * k + 2]], i))
				continue;
			PyObject *kb = PyList_GET_ITEM(keys, ins[3 * k + 1]);
			Py_ssize_t at = o.len;
			if (count[d] && put_checked(&o, ",", 1) < 0)
				goto done;
			if (put_checked(&o, PyBytes_AS_STRING(kb), PyBytes_GET_SIZE(kb)) < 0)
				goto done;
			if (op == J_OPEN) {
				if (put_checked(&o, "{", 1) < 0)
					goto done;
				mark[++d] = at;
				count[d] = 0;
			} else {
				if (put_leaf(&o, &L[ins[3 * k + 2]], i) < 0)
					goto done;
				count[d]++;
			}
		}
		if (put_checked(&o, "}\n", 2) < 0)
			goto done;
		ends[i] = o.len;
	}
	result = Py_BuildValue("y#y#", o.p ? o.p : "", o.len, (const char *)ends, n * (Py_ssize_t)sizeof(int64_t));
done:
	for (Py_ssize_t k = 0; k < MAX_LEAVES; k++) /* the leaf that failed half-way too */
		for (int b = 0; b < 4; b++)
			if (L[k].held & (1 << b))
				PyBuffer_Release(&L[k].bufs[b]);
	PyMem_Free(o.p);
	PyMem_Free(ends);
	PyBuffer_Release(&plan);
	return result;
}

static PyMethodDef methods[] = {
	{"strings", strings, METH_VARARGS, "Avro strings -> an Arrow string column"},
	{"ip_texts", ip_texts, METH_VARARGS, "addresses -> text, as Python's ipaddress writes them"},
	{"mac_texts", mac_texts, METH_VARARGS, "MACs -> hex pairs"},
	{"time_texts", time_texts, METH_VARARGS, "ns since the epoch -> RFC 3339 UTC with nanoseconds"},
	{"event_ids", event_ids, METH_VARARGS, "record identities -> event ids"},
	{"community_ids", community_ids, METH_VARARGS, "flows -> Community ID v1"},
	{"lookup", lookup, METH_VARARGS, "table texts by index -> a text column"},
	{"ndjson", ndjson, METH_VARARGS, "Arrow columns -> NDJSON lines"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_render", "hdrlog's columnar renderer: text columns and NDJSON", -1, methods,
	NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__render(void)
{
	return PyModule_Create(&module);
}
