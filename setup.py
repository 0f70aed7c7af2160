"""The compiled parts of hdrlog: the agent's fast-path Avro encoder (producer/serialize/_fastpath.c),
the HTTP ingest's row encoder and generic-event converter (producer/serialize/_rows.c,
producer/ingest/_generic.c), and the consumer's Avro reader and
renderer (producer/consumer/_reader.c, _render.c).

Everything else is in pyproject.toml; setuptools builds the extension on `pip install`
(gcc and python3-dev come from scripts/setup.sh).
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=c11"]

setup(ext_modules=[Extension("producer.serialize._fastpath", ["producer/serialize/_fastpath.c"], extra_compile_args=FLAGS),
                   Extension("producer.serialize._rows", ["producer/serialize/_rows.c"], extra_compile_args=FLAGS),
                   Extension("producer.ingest._generic", ["producer/ingest/_generic.c"], extra_compile_args=FLAGS),
                   Extension("producer.consumer._reader", ["producer/consumer/_reader.c"], extra_compile_args=FLAGS),
                   Extension("producer.consumer._render", ["producer/consumer/_render.c"], extra_compile_args=FLAGS,
                             libraries=["crypto"])])
