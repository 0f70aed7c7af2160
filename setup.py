"""The compiled parts of hdrlog: the agent's fast-path Avro encoder (producer/serialize/_fastpath.c)
and the consumer's Avro reader (producer/consumer/_reader.c).

Everything else is in pyproject.toml; setuptools builds the extension on `pip install`
(gcc and python3-dev come from scripts/setup.sh).
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=c11"]

setup(ext_modules=[Extension("producer.serialize._fastpath", ["producer/serialize/_fastpath.c"], extra_compile_args=FLAGS),
                   Extension("producer.consumer._reader", ["producer/consumer/_reader.c"], extra_compile_args=FLAGS),
                   Extension("producer.consumer._render", ["producer/consumer/_render.c"], extra_compile_args=FLAGS,
                             libraries=["crypto"])])
