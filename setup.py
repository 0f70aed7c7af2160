"""The one compiled part of hdrlog: the fast-path Avro encoder (producer/serialize/_fastpath.c).

Everything else is in pyproject.toml; setuptools builds the extension on `pip install`
(gcc and python3-dev come from scripts/setup.sh).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("producer.serialize._fastpath", ["producer/serialize/_fastpath.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-std=c11"])])
