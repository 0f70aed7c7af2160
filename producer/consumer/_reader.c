/* SPDX-License-Identifier: Apache-2.0
 *
 * The consumer's Avro reader: the binary body of a record (or of an array of
 * records) into columns, with no Python object per field.
 *
 * Like the agent's encoder it runs a *program*, here compiled by
 * producer/consumer/reader.py from the writer's schema as the registry gives
 * it, one instruction per field in schema order.  An instruction is four
 * int64s:  op, column, arg, null_branch.
 *
 *   R_LONG        Avro int, long or enum index (zig-zag varint) -> vals[column]
 *   R_BOOL        one byte, 0 or 1 -> vals[column]
 *   R_BYTES       Avro bytes or string: its offset in the buffer -> vals[column],
 *                 its length -> vals[column + 1]
 *   R_FIXED       `arg` bytes: their offset -> vals[column]
 *   R_ARRAY_LONG  array<int|long> of at most `arg` items: the count -> vals[column],
 *                 the items -> vals[column + 1 ...]; a longer array is an error
 *                 (the caller falls back to fastavro)
 *
 * A caller may ask for row-major columns instead (record i's values side by side: the writes of a
 * record then fall on consecutive cache lines, which the prefetcher follows; the caller transposes).
 *
 * null_branch >= 0: the field is a two-branch union with "null" at that index;
 * present[column] says which branch was written (it is left alone for any other
 * field: the caller knows those are always there).  vals and present are
 * column-major: column c of record i is at [c * stride + i].
 *
 * Input is untrusted (it comes from Kafka): every read is bounds-checked and
 * any malformation raises ValueError; nothing is read outside the buffer.
 * fastavro is the reference: tests/test_reader.py requires the same values.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { R_LONG = 1, R_BOOL, R_BYTES, R_FIXED, R_ARRAY_LONG };
enum { I_OP, I_COL, I_ARG, I_NULL, I_SIZE };

typedef struct {
	const uint8_t *buf;
	Py_ssize_t pos, end;
	const char *error;
} cursor;

static inline int64_t zz(cursor *c)
{
	uint64_t v = 0;
	for (int shift = 0; shift < 70; shift += 7) {
		if (c->pos >= c->end) {
			c->error = "truncated varint";
			return 0;
		}
		uint8_t b = c->buf[c->pos++];
		v |= (uint64_t)(b & 0x7F) << shift;
		if (!(b & 0x80))
			return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
	}
	c->error = "varint longer than 10 bytes";
	return 0;
}

/* One record at c->pos into slot `i` of the columns (stride `stride`); row-major: slot i is row i of
 * an [stride, n_cols] matrix instead. */
static int read_record(cursor *c, const int64_t *prog, Py_ssize_t n_ins, int64_t *vals, uint8_t *present,
		       Py_ssize_t n_cols, Py_ssize_t stride, Py_ssize_t i, int row_major)
{
#define AT(col) (row_major ? i * n_cols + (col) : (col) * stride + i)
	for (Py_ssize_t k = 0; k < n_ins; k++) {
		const int64_t *ins = prog + k * I_SIZE;
		int64_t op = ins[I_OP], col = ins[I_COL], arg = ins[I_ARG], nb = ins[I_NULL];
		int64_t width = op == R_BYTES ? 2 : op == R_ARRAY_LONG ? 1 + arg : 1;
		if (col < 0 || col + width > n_cols) {
			c->error = "instruction outside the columns";
			return -1;
		}
		if (nb >= 0) {
			int64_t branch = zz(c);
			if (c->error)
				return -1;
			if (branch == nb) {
				present[AT(col)] = 0;
				for (int64_t w = 0; w < width; w++)
					vals[AT(col + w)] = 0;
				continue;
			}
			if (branch != 1 - nb) {
				c->error = "union branch out of range";
				return -1;
			}
		}
		if (nb >= 0)
			present[AT(col)] = 1;
		switch (op) {
		case R_LONG:
			vals[AT(col)] = zz(c);
			break;
		case R_BOOL:
			if (c->pos >= c->end) {
				c->error = "truncated boolean";
				return -1;
			}
			if (c->buf[c->pos] > 1) {
				c->error = "boolean byte not 0 or 1";
				return -1;
			}
			vals[AT(col)] = c->buf[c->pos++];
			break;
		case R_BYTES: {
			int64_t len = zz(c);
			if (c->error)
				return -1;
			if (len < 0 || len > c->end - c->pos) {
				c->error = "bytes or string length beyond the buffer";
				return -1;
			}
			vals[AT(col)] = c->pos;
			vals[AT(col + 1)] = len;
			c->pos += len;
			break;
		}
		case R_FIXED:
			if (arg < 0 || arg > c->end - c->pos) {
				c->error = "truncated fixed";
				return -1;
			}
			vals[AT(col)] = c->pos;
			c->pos += arg;
			break;
		case R_ARRAY_LONG: {
			int64_t total = 0;
			for (;;) {
				int64_t count = zz(c);
				if (c->error)
					return -1;
				if (count == 0)
					break;
				if (count < 0) {
					count = -count;
					(void)zz(c); /* the block's size in bytes */
					if (c->error)
						return -1;
				}
				if (count > arg - total) {
					c->error = "array longer than the reader takes";
					return -1;
				}
				for (int64_t j = 0; j < count; j++) {
					vals[AT(col + 1 + total)] = zz(c);
					total++;
				}
				if (c->error)
					return -1;
			}
			for (int64_t j = total; j < arg; j++)
				vals[AT(col + 1 + j)] = 0;
			vals[AT(col)] = total;
			break;
		}
		default:
			c->error = "unknown instruction";
			return -1;
		}
		if (c->error)
			return -1;
	}
	return 0;
#undef AT
}

static int check(Py_buffer *prog, Py_buffer *vals, Py_buffer *present, Py_ssize_t stride, Py_ssize_t *n_ins,
		 Py_ssize_t *n_cols)
{
	if (prog->len % (Py_ssize_t)(I_SIZE * sizeof(int64_t)) || stride <= 0 ||
	    vals->len % (stride * (Py_ssize_t)sizeof(int64_t)) ||
	    present->len != vals->len / (Py_ssize_t)sizeof(int64_t)) {
		PyErr_SetString(PyExc_ValueError, "reader: inconsistent buffer sizes");
		return -1;
	}
	*n_ins = prog->len / (Py_ssize_t)(I_SIZE * sizeof(int64_t));
	*n_cols = vals->len / (stride * (Py_ssize_t)sizeof(int64_t));
	return 0;
}

/* read_spans(buf, starts, ends, program, vals, present, stride[, row_major]) -> None
 * Record i is the bytes starts[i] .. ends[i] (stride of each): each must be read whole. */
static PyObject *read_spans(PyObject *self, PyObject *args)
{
	Py_buffer buf = {0}, starts = {0}, ends = {0}, prog = {0}, vals = {0}, present = {0};
	Py_ssize_t stride, n_ins, n_cols;
	int row_major = 0;
	PyObject *result = NULL;
	(void)self;
	if (!PyArg_ParseTuple(args, "y*y*y*y*w*w*n|p", &buf, &starts, &ends, &prog, &vals, &present, &stride,
			      &row_major))
		return NULL;
	if (check(&prog, &vals, &present, stride, &n_ins, &n_cols) < 0)
		goto out;
	if (starts.len != stride * (Py_ssize_t)sizeof(int64_t) || ends.len != starts.len) {
		PyErr_SetString(PyExc_ValueError, "reader: spans do not match the columns");
		goto out;
	}
	const int64_t *lo = (const int64_t *)starts.buf, *hi = (const int64_t *)ends.buf;
	for (Py_ssize_t i = 0; i < stride; i++) {
		if (lo[i] < 0 || lo[i] > hi[i] || hi[i] > buf.len) {
			PyErr_SetString(PyExc_ValueError, "reader: a span outside the buffer");
			goto out;
		}
		cursor c = {(const uint8_t *)buf.buf, lo[i], hi[i], NULL};
		if (read_record(&c, (const int64_t *)prog.buf, n_ins, (int64_t *)vals.buf, (uint8_t *)present.buf,
				n_cols, stride, i, row_major) < 0 || c.pos != c.end) {
			PyErr_Format(PyExc_ValueError, "record %zd: %s", i, c.error ? c.error : "bytes left after the record");
			goto out;
		}
	}
	result = Py_NewRef(Py_None);
out:
	PyBuffer_Release(&buf);
	PyBuffer_Release(&starts);
	PyBuffer_Release(&ends);
	PyBuffer_Release(&prog);
	PyBuffer_Release(&vals);
	PyBuffer_Release(&present);
	return result;
}

/* read_one(buf, offset, program, vals, present) -> end: one record (stride 1) from offset. */
static PyObject *read_one(PyObject *self, PyObject *args)
{
	Py_buffer buf = {0}, prog = {0}, vals = {0}, present = {0};
	Py_ssize_t offset, n_ins, n_cols;
	PyObject *result = NULL;
	(void)self;
	if (!PyArg_ParseTuple(args, "y*ny*w*w*", &buf, &offset, &prog, &vals, &present))
		return NULL;
	if (check(&prog, &vals, &present, 1, &n_ins, &n_cols) < 0)
		goto out;
	if (offset < 0 || offset > buf.len) {
		PyErr_SetString(PyExc_ValueError, "reader: offset outside the buffer");
		goto out;
	}
	cursor c = {(const uint8_t *)buf.buf, offset, buf.len, NULL};
	if (read_record(&c, (const int64_t *)prog.buf, n_ins, (int64_t *)vals.buf, (uint8_t *)present.buf, n_cols, 1,
			0, 0) < 0) {
		PyErr_SetString(PyExc_ValueError, c.error);
		goto out;
	}
	result = PyLong_FromSsize_t(c.pos);
out:
	PyBuffer_Release(&buf);
	PyBuffer_Release(&prog);
	PyBuffer_Release(&vals);
	PyBuffer_Release(&present);
	return result;
}

/* read_array(buf, offset, program, vals, present, stride[, first[, row_major]]) -> (count, end): an Avro
 * array of records into the slots from `first` on, at most `stride - first` of them. */
static PyObject *read_array(PyObject *self, PyObject *args)
{
	Py_buffer buf = {0}, prog = {0}, vals = {0}, present = {0};
	Py_ssize_t offset, stride, n_ins, n_cols, first = 0, n;
	int row_major = 0;
	PyObject *result = NULL;
	(void)self;
	if (!PyArg_ParseTuple(args, "y*ny*w*w*n|np", &buf, &offset, &prog, &vals, &present, &stride, &first,
			      &row_major))
		return NULL;
	if (check(&prog, &vals, &present, stride, &n_ins, &n_cols) < 0)
		goto out;
	if (first < 0 || first > stride) {
		PyErr_SetString(PyExc_ValueError, "reader: first slot outside the columns");
		goto out;
	}
	n = first;
	if (offset < 0 || offset > buf.len) {
		PyErr_SetString(PyExc_ValueError, "reader: offset outside the buffer");
		goto out;
	}
	cursor c = {(const uint8_t *)buf.buf, offset, buf.len, NULL};
	for (;;) {
		int64_t count = zz(&c);
		if (c.error)
			break;
		if (count == 0)
			break;
		if (count < 0) {
			count = -count;
			(void)zz(&c);
			if (c.error)
				break;
		}
		if (count > stride - n) {
			c.error = "more records than the columns hold";
			break;
		}
		for (int64_t j = 0; j < count; j++, n++)
			if (read_record(&c, (const int64_t *)prog.buf, n_ins, (int64_t *)vals.buf, (uint8_t *)present.buf,
					n_cols, stride, n, row_major) < 0)
				break;
		if (c.error)
			break;
	}
	if (c.error) {
		PyErr_Format(PyExc_ValueError, "record %zd: %s", n - first, c.error);
		goto out;
	}
	result = Py_BuildValue("nn", n - first, c.pos);
out:
	PyBuffer_Release(&buf);
	PyBuffer_Release(&prog);
	PyBuffer_Release(&vals);
	PyBuffer_Release(&present);
	return result;
}

static PyMethodDef methods[] = {
	{"read_spans", read_spans, METH_VARARGS, "read one record per span (start, end) into columns"},
	{"read_one", read_one, METH_VARARGS, "read one record from an offset into columns; returns its end"},
	{"read_array", read_array, METH_VARARGS, "read an Avro array of records into columns; returns (count, end)"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_reader", "hdrlog's Avro reader: record bodies into columns", -1, methods,
	NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__reader(void)
{
	return PyModule_Create(&module);
}
