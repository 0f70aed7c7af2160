/* SPDX-License-Identifier: Apache-2.0
 *
 * The HTTP ingest's hot path: generic events (dicts, as orjson parsed them)
 * to LogEvent rows, for producer/ingest/parse.py.
 *
 * It takes only the common case and leaves every other item to the Python
 * converter (``parse.generic``), which stays the one definition of what an
 * event may be and of every error message: an item that is not a plain dict,
 * has an unknown or oddly typed field, an address or protocol not yet in the
 * caches the Python side fills (``Values``), a port that is not an int in
 * 0..65535, a timestamp that is not ASCII RFC 3339 or integer milliseconds in
 * range, or an attribute that is not a string, comes back as None and Python
 * converts it (or says why not).  tests/test_ingest_parse.py requires the
 * same rows from both on thousands of random items.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define MAX_NS INT64_MAX
#define N_FIELDS 18

static PyObject *k_message, *k_timestamp, *k_level, *k_details, *k_src_ip, *k_dst_ip, *k_src_port, *k_dst_port,
	*k_port, *k_protocol, *s_lower;
/* the 5-tuple's keys in ``details`` -> enum tuple_key: one dict lookup a key (orjson's keys carry their
 * hash), not a string comparison with each name */
static PyObject *tuple_keys;
enum tuple_key { K_OTHER, K_SRC_IP, K_DST_IP, K_SRC_PORT, K_DST_PORT, K_PROTOCOL };

/* the key's enum tuple_key; -1 with an exception set */
static int tuple_key_of(PyObject *key)
{
	PyObject *code = PyDict_GetItemWithError(tuple_keys, key);
	if (code == NULL)
		return PyErr_Occurred() ? -1 : K_OTHER;
	return (int)PyLong_AsLong(code);
}

/* ``level`` lower-cased, a new reference: itself when it is ASCII without capitals (the usual case) */
static PyObject *lower_of(PyObject *level)
{
	if (PyUnicode_IS_ASCII(level)) {
		const unsigned char *c = PyUnicode_1BYTE_DATA(level);
		Py_ssize_t n = PyUnicode_GET_LENGTH(level), i = 0;
		while (i < n && !(c[i] >= 'A' && c[i] <= 'Z'))
			i++;
		if (i == n)
			return Py_NewRef(level);
	}
	return PyObject_CallMethodNoArgs(level, s_lower);
}

static int digits(const char *p, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		v = v * 10 + (p[i] - '0');
	}
	*out = v;
	return 0;
}

static int64_t days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int month_days(int y, int m)
{
	static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	return m == 2 ? 28 + leap : days[m - 1];
}

/* ASCII RFC 3339 as parse.rfc3339_ns reads it; 0 and *ns, or -1: let Python decide */
static int rfc3339(PyObject *text, int64_t *ns)
{
	if (!PyUnicode_IS_ASCII(text))
		return -1;
	Py_ssize_t n = PyUnicode_GET_LENGTH(text);
	const char *p = (const char *)PyUnicode_DATA(text);
	int y, mo, d, h, mi, s, frac = 0, fdigits = 0;
	if (n < 20 || digits(p, 4, &y) || p[4] != '-' || digits(p + 5, 2, &mo) || p[7] != '-' || digits(p + 8, 2, &d) ||
	    (p[10] != 'T' && p[10] != 't' && p[10] != ' ') || digits(p + 11, 2, &h) || p[13] != ':' ||
	    digits(p + 14, 2, &mi) || p[16] != ':' || digits(p + 17, 2, &s))
		return -1;
	Py_ssize_t i = 19;
	if (p[i] == '.') {
		i++;
		while (i < n && p[i] >= '0' && p[i] <= '9') {
			if (fdigits == 9)
				return -1; /* a tenth digit: not RFC 3339 as parse.py reads it */
			frac = frac * 10 + (p[i] - '0');
			fdigits++;
			i++;
		}
		if (fdigits < 1)
			return -1;
		for (int k = fdigits; k < 9; k++)
			frac *= 10;
	}
	int64_t offset = 0;
	if (i + 1 == n && (p[i] == 'Z' || p[i] == 'z')) {
		/* UTC */
	} else if (i + 6 == n && (p[i] == '+' || p[i] == '-') && p[i + 3] == ':') {
		int oh, om;
		if (digits(p + i + 1, 2, &oh) || digits(p + i + 4, 2, &om))
			return -1;
		offset = ((int64_t)oh * 60 + om) * 60 * (p[i] == '+' ? 1 : -1);
	} else {
		return -1;
	}
	if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo) || h > 23 || mi > 59 || s > 60)
		return -1;
	int64_t secs = days_from_civil(y, mo, d) * 86400 + (int64_t)h * 3600 + mi * 60 + (s > 59 ? 59 : s) - offset;
	if (secs < 0 || secs > MAX_NS / 1000000000 - 1)
		return -1;
	*ns = secs * 1000000000 + frac;
	return 0;
}

/* a port as an exact int 0..65535, else -1 */
static long port_of(PyObject *v)
{
	if (!PyLong_CheckExact(v))
		return -1;
	long p = PyLong_AsLong(v);
	if (p == -1 && PyErr_Occurred()) {
		PyErr_Clear();
		return -1;
	}
	return p >= 0 && p <= 0xFFFF ? p : -1;
}

static int is_empty(PyObject *v)
{
	return v == Py_None || (PyUnicode_CheckExact(v) && PyUnicode_GET_LENGTH(v) == 0);
}

/* the row of one item, a new reference; Py_None (new reference) to leave it to Python; NULL on error */
static PyObject *row_of(PyObject *item, PyObject *received, int64_t received_ns, PyObject *addresses,
			PyObject *protocols)
{
	if (!PyDict_CheckExact(item))
		Py_RETURN_NONE;
	Py_ssize_t known = 0;
	PyObject *message = PyDict_GetItemWithError(item, k_message);
	PyObject *ts = PyDict_GetItemWithError(item, k_timestamp);
	PyObject *level = PyDict_GetItemWithError(item, k_level);
	PyObject *details = PyDict_GetItemWithError(item, k_details);
	if (PyErr_Occurred())
		return NULL;
	known = (message != NULL) + (ts != NULL) + (level != NULL) + (details != NULL);
	if (known != PyDict_GET_SIZE(item) || message == NULL || !PyUnicode_CheckExact(message))
		Py_RETURN_NONE;
	int64_t time_ns = received_ns;
	if (ts != NULL && ts != Py_None) {
		if (PyUnicode_CheckExact(ts)) {
			if (rfc3339(ts, &time_ns))
				Py_RETURN_NONE;
		} else if (PyLong_CheckExact(ts)) {
			int overflow = 0;
			long long ms = PyLong_AsLongLongAndOverflow(ts, &overflow);
			if (overflow || ms < 0 || ms > MAX_NS / 1000000)
				Py_RETURN_NONE;
			time_ns = (int64_t)ms * 1000000;
		} else {
			Py_RETURN_NONE;
		}
	}
	PyObject *src = Py_None, *dst = Py_None, *sport = Py_None, *dport = Py_None, *proto = Py_None;
	PyObject *attrs = PyDict_New(), *lowered = NULL, *row = NULL, *tsobj = NULL;
	if (attrs == NULL)
		return NULL;
	if (details != NULL && details != Py_None) {
		if (!PyDict_CheckExact(details))
			goto python;
		Py_ssize_t pos = 0;
		PyObject *key, *value;
		while (PyDict_Next(details, &pos, &key, &value)) {
			if (!PyUnicode_CheckExact(key))
				goto python;
			int code = tuple_key_of(key);
			if (code < 0)
				goto error;
			int tuple_key = code != K_OTHER;
			if (code == K_SRC_IP || code == K_DST_IP) {
				if (is_empty(value))
					continue;
				PyObject *raw = PyUnicode_CheckExact(value) ? PyDict_GetItemWithError(addresses, value) : NULL;
				if (raw == NULL)
					goto python_or_error;
				if (code == K_SRC_IP)
					src = raw;
				else
					dst = raw;
			} else if (code == K_SRC_PORT) {
				if (is_empty(value))
					continue;
				if (port_of(value) < 0)
					goto python;
				sport = value;
			} else if (code == K_DST_PORT) {
				if (is_empty(value))
					continue;
				if (dport != Py_None || port_of(value) < 0)
					goto python;
				dport = value;
			} else if (code == K_PROTOCOL) {
				if (is_empty(value))
					continue;
				PyObject *number = (PyUnicode_CheckExact(value) || PyLong_CheckExact(value))
							   ? PyDict_GetItemWithError(protocols, value)
							   : NULL;
				if (number == NULL)
					goto python_or_error;
				proto = number;
			}
			if (PyErr_Occurred())
				goto error;
			if (tuple_key)
				continue;
			if (value == Py_None)
				continue;
			if (!PyUnicode_CheckExact(value))
				goto python;
			if (PyDict_SetItem(attrs, key, value))
				goto error;
		}
		if (src != Py_None && dst != Py_None && PyBytes_GET_SIZE(src) != PyBytes_GET_SIZE(dst))
			goto python;
	}
	if (level != NULL && !is_empty(level)) {
		if (!PyUnicode_CheckExact(level))
			goto python;
		lowered = lower_of(level);
		if (lowered == NULL)
			goto error;
	}
	tsobj = time_ns == received_ns ? Py_NewRef(received) : PyLong_FromLongLong(time_ns);
	if (tsobj == NULL)
		goto error;
	row = PyTuple_New(N_FIELDS);
	if (row == NULL)
		goto error;
	PyObject *items[N_FIELDS] = {tsobj, received, NULL, lowered ? lowered : Py_None, message, src, dst, sport,
				     dport, proto, Py_None, Py_None, Py_None, Py_None, Py_None, Py_None, Py_None,
				     attrs};
	items[2] = PyLong_FromLong(0);
	if (items[2] == NULL) {
		Py_CLEAR(row);
		goto error;
	}
	for (int i = 0; i < N_FIELDS; i++)
		PyTuple_SET_ITEM(row, i, i == 2 ? items[i] : Py_NewRef(items[i]));
	Py_DECREF(tsobj);
	Py_XDECREF(lowered);
	Py_DECREF(attrs);
	return row;
python_or_error:
	if (PyErr_Occurred())
		goto error;
python:
	Py_XDECREF(lowered);
	Py_DECREF(attrs);
	Py_RETURN_NONE;
error:
	Py_XDECREF(tsobj);
	Py_XDECREF(lowered);
	Py_DECREF(attrs);
	return NULL;
}

static PyObject *rows(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *items, *received, *addresses, *protocols;
	if (!PyArg_ParseTuple(args, "O!O!O!O!", &PyList_Type, &items, &PyLong_Type, &received, &PyDict_Type,
			      &addresses, &PyDict_Type, &protocols))
		return NULL;
	int64_t received_ns = PyLong_AsLongLong(received);
	if (received_ns == -1 && PyErr_Occurred())
		return NULL;
	Py_ssize_t n = PyList_GET_SIZE(items);
	PyObject *out = PyList_New(n);
	if (out == NULL)
		return NULL;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *row = row_of(PyList_GET_ITEM(items, i), received, received_ns, addresses, protocols);
		if (row == NULL) {
			Py_DECREF(out);
			return NULL;
		}
		PyList_SET_ITEM(out, i, row);
	}
	return out;
}

static PyMethodDef methods[] = {
	{"rows", rows, METH_VARARGS,
	 "rows(items, received_ns, addresses, protocols) -> list\n\n"
	 "Each generic event's LogEvent row, or None where Python must decide (see the module's comment)."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "producer.ingest._generic",
	"Generic log events to LogEvent rows: the common case, in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__generic(void)
{
	const char *names[] = {"message", "timestamp", "level", "details", "src_ip", "dst_ip", "src_port", "dst_port",
			       "port", "protocol", "lower"};
	PyObject **slots[] = {&k_message, &k_timestamp, &k_level, &k_details, &k_src_ip, &k_dst_ip, &k_src_port,
			      &k_dst_port, &k_port, &k_protocol, &s_lower};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		*slots[i] = PyUnicode_InternFromString(names[i]);
		if (*slots[i] == NULL)
			return NULL;
	}
	tuple_keys = PyDict_New();
	if (tuple_keys == NULL)
		return NULL;
	PyObject *keys[] = {k_src_ip, k_dst_ip, k_src_port, k_dst_port, k_port, k_protocol};
	int codes[] = {K_SRC_IP, K_DST_IP, K_SRC_PORT, K_DST_PORT, K_DST_PORT, K_PROTOCOL};
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		PyObject *code = PyLong_FromLong(codes[i]);
		if (code == NULL || PyDict_SetItem(tuple_keys, keys[i], code) < 0) {
			Py_XDECREF(code);
			return NULL;
		}
		Py_DECREF(code);
	}
	return PyModule_Create(&module);
}
