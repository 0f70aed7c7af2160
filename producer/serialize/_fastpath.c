/* SPDX-License-Identifier: Apache-2.0
 *
 * hdrlog's fast path: a block of raw kernel records (struct hdrlog_record,
 * bpf/record.h) straight to Avro binary, with no Python object per record.
 *
 * The encoder knows nothing of the schema or the record layout by itself: it
 * runs a *program* that producer/serialize/columnar.py compiles from the Avro
 * schema and from producer/abi.py, one instruction per schema field, in schema
 * order.  An instruction is eight int64s:
 *
 *     op, offset, width, present_mask, shift, and_mask, nullable, extra
 *
 *   OP_VARINT  the unsigned little-endian integer of `width` bytes at `offset`,
 *              >> shift, & and_mask (if non-zero), + the wall-clock offset if
 *              extra == 1; zig-zag varint (Avro int, long and enum index)
 *   OP_FLAG    a boolean: (flags & and_mask) != 0
 *   OP_FIXED   `width` raw bytes at `offset` (Avro fixed)
 *   OP_IP      Avro bytes: the 16 bytes at `offset` if the byte at `extra`
 *              (ip_version) is 6, else its first 4
 *   OP_VLANS   array<int>: the count (u8 at `offset`, at most `width` < 64), the
 *              u16 ids at `extra`, the end-of-array 0 when the count is not 0
 *   OP_CONST   the pre-encoded bytes consts[extra] (host id, capture id, ...)
 *   OP_IFACE   the pre-encoded name of the u32 ifindex at `offset`, looked up
 *              in the (keys, names) table given with the call
 *   OP_SEQ     zig-zag varint of seq_base + the record's index
 *
 * Presence ("null" or T): with nullable != 0 the branch byte is written, 0 for
 * null, 2 for T; T is present when present_mask is 0 or (flags & present_mask)
 * != 0.  fastavro is the reference: tests/test_columnar.py requires the same
 * bytes as fastavro, and the Apache avro package to read them back.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { OP_VARINT = 1, OP_FLAG, OP_FIXED, OP_IP, OP_VLANS, OP_CONST, OP_IFACE, OP_SEQ };
enum { I_OP, I_OFF, I_WIDTH, I_PRESENT, I_SHIFT, I_AND, I_NULLABLE, I_EXTRA, I_SIZE };

typedef struct {
	const char *data;
	Py_ssize_t len;
} blob;

static inline uint64_t load(const uint8_t *p, int64_t width)
{
	switch (width) {
	case 1: return p[0];
	case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
	case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
	default: { uint64_t v; memcpy(&v, p, 8); return v; }
	}
}

static inline uint8_t *put_long(uint8_t *out, int64_t v)
{
	uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
	while (z > 0x7F) {
		*out++ = (uint8_t)(z | 0x80);
		z >>= 7;
	}
	*out++ = (uint8_t)z;
	return out;
}

static inline uint8_t *put_blob(uint8_t *out, const blob *b)
{
	memcpy(out, b->data, (size_t)b->len);
	return out + b->len;
}

/* the most bytes one instruction can write */
static Py_ssize_t max_bytes(const int64_t *ins, const blob *consts, Py_ssize_t iface_max)
{
	Py_ssize_t n = ins[I_NULLABLE] ? 1 : 0;
	switch (ins[I_OP]) {
	case OP_VARINT: case OP_SEQ: return n + 10;
	case OP_FLAG: return n + 1;
	case OP_FIXED: return n + ins[I_WIDTH];
	case OP_IP: return n + 1 + 16;
	case OP_VLANS: return n + 1 + ins[I_WIDTH] * 3 + 1; /* a count below 64: one byte; ids: 3 */
	case OP_CONST: return n + consts[ins[I_EXTRA]].len;
	case OP_IFACE: return n + iface_max;
	default: return -1;
	}
}

static PyObject *encode(PyObject *self, PyObject *args)
{
	Py_buffer rec = {0}, prog = {0}, keys = {0}, offs = {0};
	PyObject *consts_t, *names_t, *result = NULL;
	long long wall, seq_base;
	Py_ssize_t record_size, flags_off;
	const char *prefix;
	Py_ssize_t prefix_len;
	blob *consts = NULL, *names = NULL;
	(void)self;

	if (!PyArg_ParseTuple(args, "y*nny*O!y*O!LLy#w*", &rec, &record_size, &flags_off, &prog,
			      &PyTuple_Type, &consts_t, &keys, &PyTuple_Type, &names_t, &wall, &seq_base,
			      &prefix, &prefix_len, &offs))
		return NULL;

	Py_ssize_t n = record_size > 0 ? rec.len / record_size : 0;
	Py_ssize_t n_ins = prog.len / (Py_ssize_t)(I_SIZE * sizeof(int64_t));
	Py_ssize_t n_consts = PyTuple_GET_SIZE(consts_t), n_names = PyTuple_GET_SIZE(names_t);
	const int64_t *program = (const int64_t *)prog.buf;
	const uint32_t *key = (const uint32_t *)keys.buf;
	int64_t *offsets = (int64_t *)offs.buf;

	if (record_size <= 0 || rec.len % record_size || flags_off < 0 || flags_off + 2 > record_size ||
	    prog.len % (Py_ssize_t)(I_SIZE * sizeof(int64_t)) || keys.len != n_names * 4 ||
	    offs.len < (n + 1) * (Py_ssize_t)sizeof(int64_t)) {
		PyErr_SetString(PyExc_ValueError, "fastpath.encode: inconsistent buffer sizes");
		goto out;
	}
	consts = PyMem_Calloc((size_t)n_consts + 1, sizeof(blob));
	names = PyMem_Calloc((size_t)n_names + 1, sizeof(blob));
	if (!consts || !names) {
		PyErr_NoMemory();
		goto out;
	}
	Py_ssize_t iface_max = 0;
	for (Py_ssize_t i = 0; i < n_consts; i++)
		if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(consts_t, i), (char **)&consts[i].data, &consts[i].len))
			goto out;
	for (Py_ssize_t i = 0; i < n_names; i++) {
		if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(names_t, i), (char **)&names[i].data, &names[i].len))
			goto out;
		if (names[i].len > iface_max)
			iface_max = names[i].len;
	}
	/* validate the program once; the loop below trusts it */
	Py_ssize_t per_record = prefix_len;
	for (Py_ssize_t j = 0; j < n_ins; j++) {
		const int64_t *ins = program + j * I_SIZE;
		int64_t end = ins[I_OFF] + (ins[I_OP] == OP_FIXED || ins[I_OP] == OP_VARINT ? ins[I_WIDTH] : 1);
		if (ins[I_OP] == OP_IP)
			end = ins[I_OFF] + 16;
		if (ins[I_OP] == OP_VLANS)
			end = ins[I_OFF] + 1;
		if (ins[I_OP] == OP_IFACE)
			end = ins[I_OFF] + 4;
		if (ins[I_OP] == OP_CONST && (ins[I_EXTRA] < 0 || ins[I_EXTRA] >= n_consts)) {
			PyErr_Format(PyExc_ValueError, "fastpath.encode: instruction %zd: no constant %lld", j,
				     (long long)ins[I_EXTRA]);
			goto out;
		}
		if ((ins[I_OP] == OP_VARINT && ins[I_WIDTH] != 1 && ins[I_WIDTH] != 2 && ins[I_WIDTH] != 4 &&
		     ins[I_WIDTH] != 8) || ins[I_OFF] < 0 || end > record_size ||
		    (ins[I_OP] == OP_IP && (ins[I_EXTRA] < 0 || ins[I_EXTRA] >= record_size)) ||
		    (ins[I_OP] == OP_VLANS && (ins[I_EXTRA] < 0 || ins[I_EXTRA] + 2 * ins[I_WIDTH] > record_size)) ||
		    (ins[I_OP] == OP_FIXED && ins[I_WIDTH] < 0) ||
		    (ins[I_OP] == OP_VLANS && (ins[I_WIDTH] < 0 || ins[I_WIDTH] > 63)) ||
		    ins[I_SHIFT] < 0 || ins[I_SHIFT] > 63) {
			PyErr_Format(PyExc_ValueError, "fastpath.encode: instruction %zd is out of the record", j);
			goto out;
		}
		Py_ssize_t m = max_bytes(ins, consts, iface_max);
		if (m < 0) {
			PyErr_Format(PyExc_ValueError, "fastpath.encode: instruction %zd: unknown op %lld", j,
				     (long long)ins[I_OP]);
			goto out;
		}
		per_record += m;
	}

	result = PyBytes_FromStringAndSize(NULL, per_record * n);
	if (!result)
		goto out;
	uint8_t *const base = (uint8_t *)PyBytes_AS_STRING(result);
	uint8_t *o = base;
	const uint8_t *r = (const uint8_t *)rec.buf;
	int missing = 0;
	uint32_t missing_ifindex = 0;

	Py_BEGIN_ALLOW_THREADS
	for (Py_ssize_t i = 0; i < n && !missing; i++, r += record_size) {
		offsets[i] = (int64_t)(o - base);
		memcpy(o, prefix, (size_t)prefix_len);
		o += prefix_len;
		const uint16_t flags = (uint16_t)load(r + flags_off, 2);
		for (Py_ssize_t j = 0; j < n_ins; j++) {
			const int64_t *ins = program + j * I_SIZE;
			const uint8_t *p = r + ins[I_OFF];
			if (ins[I_NULLABLE]) {
				if (ins[I_PRESENT] && !(flags & ins[I_PRESENT])) {
					*o++ = 0;
					continue;
				}
				*o++ = 2;
			}
			switch (ins[I_OP]) {
			case OP_VARINT: {
				uint64_t v = load(p, ins[I_WIDTH]) >> ins[I_SHIFT];
				if (ins[I_AND])
					v &= (uint64_t)ins[I_AND];
				if (ins[I_EXTRA] == 1)
					v += (uint64_t)wall;
				o = put_long(o, (int64_t)v);
				break;
			}
			case OP_FLAG:
				*o++ = (flags & ins[I_AND]) != 0;
				break;
			case OP_FIXED:
				memcpy(o, p, (size_t)ins[I_WIDTH]);
				o += ins[I_WIDTH];
				break;
			case OP_IP: {
				int len = r[ins[I_EXTRA]] == 6 ? 16 : 4;
				*o++ = (uint8_t)(len * 2);
				memcpy(o, p, (size_t)len);
				o += len;
				break;
			}
			case OP_VLANS: {
				int64_t count = p[0] < ins[I_WIDTH] ? p[0] : ins[I_WIDTH];
				o = put_long(o, count);
				for (int64_t k = 0; k < count; k++)
					o = put_long(o, (int64_t)load(r + ins[I_EXTRA] + 2 * k, 2));
				if (count)
					*o++ = 0;
				break;
			}
			case OP_CONST:
				o = put_blob(o, &consts[ins[I_EXTRA]]);
				break;
			case OP_IFACE: {
				uint32_t ifindex = (uint32_t)load(p, 4);
				Py_ssize_t k = 0;
				while (k < n_names && key[k] != ifindex)
					k++;
				if (k == n_names) {
					missing = 1;
					missing_ifindex = ifindex;
					break;
				}
				o = put_blob(o, &names[k]);
				break;
			}
			case OP_SEQ:
				o = put_long(o, (int64_t)(seq_base + i));
				break;
			}
		}
	}
	offsets[n] = (int64_t)(o - base);
	Py_END_ALLOW_THREADS

	if (missing) {
		PyErr_Format(PyExc_KeyError, "fastpath.encode: no interface name for ifindex %u", missing_ifindex);
		Py_CLEAR(result);
		goto out;
	}
	if (_PyBytes_Resize(&result, (Py_ssize_t)(o - base)))
		result = NULL;
out:
	PyMem_Free(consts);
	PyMem_Free(names);
	PyBuffer_Release(&rec);
	PyBuffer_Release(&prog);
	PyBuffer_Release(&keys);
	PyBuffer_Release(&offs);
	return result;
}

static PyMethodDef methods[] = {
	{"encode", encode, METH_VARARGS,
	 "encode(records, record_size, flags_offset, program, consts, iface_keys, iface_names, wall_offset_ns,\n"
	 "       seq_base, prefix, offsets_out) -> bytes\n\n"
	 "Every record's Avro body (each after `prefix`) back to back; offsets_out[i] (int64, n + 1 of them)\n"
	 "receives where record i starts and offsets_out[n] the total length."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "producer.serialize._fastpath",
	"Raw kernel records to Avro binary, driven by a program compiled from the schema.", -1, methods,
	NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
	return PyModule_Create(&module);
}
