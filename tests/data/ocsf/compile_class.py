"""Compile one OCSF event class into a self-contained JSON definition (test data).

The output is what a test needs to check an emitted event: every attribute of
the class with its requirement, OCSF type, base type, JSON type, array flag and
enum (value -> caption), and every object the class references (recursively,
to a bounded depth), keyed by object name, with the same per-attribute facts.

Sources, all from the ocsf/ocsf-schema repository at one release tag:

* ``events/**.json``     the class and the classes it ``extends`` (up to ``base_event``)
* ``objects/*.json``     the referenced objects and the objects they ``extend``
* ``dictionary.json``    attribute types, captions, descriptions, enums; ``types``
* ``categories.json``    the category uid (``class_uid = category_uid * 1000 + uid``)
* ``profiles/*.json``    only to name the profiles and list their attributes apart
* ``version.json``       the schema version

Rules (those of the OCSF server and of ocsf-lib-py's compiler):

* ``extends``, ``$include`` and the dictionary are merged *left-biased*: the more
  specific definition keeps what it sets, and fills only what it lacks from
  the parent / included file / dictionary; enums are merged key by key, so a
  class-level ``activity_id`` enum (1..7) joins the base event's 0 and 99.
* A ``$include`` of a file under ``profiles/`` is *not* merged into the class
  or object: profiles are optional.  The class's profile attributes are listed
  apart under ``profiles`` (each marked with its profile); objects only name
  their profiles.  Any other ``$include`` is merged.
* An attribute without a requirement is ``optional``.
* ``class_uid``, ``category_uid`` and ``type_uid`` get the enums the server
  derives: ``type_uid = class_uid * 100 + activity_id``.
* An attribute whose dictionary type is not a data type names an object: it is
  given ``type: object_t`` and ``object_type: <object name>``.
* Objects are compiled breadth first from the class (depth 1 = referenced by a
  class or profile attribute).  Objects past ``--max-depth`` are not compiled:
  the attributes that reference them carry ``"truncated": true``, and an
  attribute whose object is the object it belongs to carries ``"recursive": true``.
* Extensions (``extensions/``) are not applied: this is the core schema.

Run (from the repository root; needs only python3 and git):

    git clone https://github.com/ocsf/ocsf-schema /tmp/ocsf-schema
    python3 tests/data/ocsf/compile_class.py --schema /tmp/ocsf-schema --ref 1.8.0 \\
        --out tests/data/ocsf/network_activity.json

``--schema`` is a clone (or a bare git directory); with ``--ref`` the files are
read with ``git show <ref>:<path>`` so the work tree need not be checked out;
without ``--ref`` the files are read from the directory as it is.  Other
options: ``--class network_activity`` (default), ``--max-depth 3`` (default).
The output is deterministic (sorted keys), so a re-run from the same tag gives
the same file.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

JSON_TYPES = {
    "string_t": "string",
    "integer_t": "integer",
    "long_t": "integer",
    "float_t": "number",
    "boolean_t": "boolean",
    "json_t": "any",
    "object_t": "object",
}
REQUIREMENTS = ("required", "recommended", "optional")
# Per-attribute keys copied from the merged definition into the output.
KEPT_KEYS = ("caption", "description", "group", "sibling", "observable", "@deprecated", "profile")


class Source:
    """Reads schema files from a directory, or from a git ref of a (bare or not) repository."""

    def __init__(self, schema: Path, ref: str | None) -> None:
        self.schema = schema
        self.ref = ref
        self.commit: str | None = None
        self._text: dict[str, str] = {}
        if ref is not None:
            self.commit = self._git("rev-parse", f"{ref}^{{commit}}").strip()
            self.paths = self._git("ls-tree", "-r", "--name-only", self.commit).splitlines()
        else:
            self.paths = sorted(str(p.relative_to(schema)) for p in schema.rglob("*.json"))
            try:
                self.commit = self._git("rev-parse", "HEAD").strip()
            except (subprocess.CalledProcessError, OSError):
                self.commit = None

    def _git(self, *args: str) -> str:
        git_dir = self.schema / ".git" if (self.schema / ".git").exists() else self.schema
        return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, text=True).stdout

    def load(self, path: str) -> Any:
        """A fresh parse of the file (callers may change what they get)."""
        if path not in self._text:
            if self.ref is not None:
                self._text[path] = self._git("show", f"{self.commit}:{path}")
            else:
                self._text[path] = (self.schema / path).read_text()
        return json.loads(self._text[path])


def merge_left(left: Any, right: Any) -> Any:
    """Left-biased deep merge: keep what ``left`` sets, add what only ``right`` has."""
    if isinstance(left, dict) and isinstance(right, dict):
        out = dict(left)
        for key, value in right.items():
            out[key] = merge_left(left[key], value) if key in left else copy.deepcopy(value)
        return out
    return left


class Compiler:
    def __init__(self, src: Source, max_depth: int) -> None:
        self.src = src
        self.max_depth = max_depth
        self.dictionary = src.load("dictionary.json")
        self.dict_attrs: dict[str, Any] = self.dictionary["attributes"]
        self.types: dict[str, Any] = self.dictionary["types"]["attributes"]
        self.categories: dict[str, Any] = src.load("categories.json")["attributes"]
        self.version: str = src.load("version.json")["version"]
        self.events = self._index("events/")
        self.objects = self._index("objects/")
        self.used_files: set[str] = {"dictionary.json", "categories.json", "version.json"}

    def _index(self, prefix: str) -> dict[str, str]:
        index: dict[str, str] = {}
        for path in self.src.paths:
            if path.startswith(prefix) and path.endswith(".json"):
                name = self.src.load(path).get("name")
                if name in index:
                    raise SystemExit(f"duplicate definition of {name!r}: {index[name]} and {path}")
                index[name] = path
        return index

    # ---- definitions -------------------------------------------------------------------------

    def _attributes_of(self, defn: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """A file's own attributes with non-profile $includes merged; and the profiles it includes."""
        attrs = dict(defn.get("attributes", {}))
        includes = attrs.pop("$include", [])
        profiles = []
        for inc in [includes] if isinstance(includes, str) else includes:
            self.used_files.add(inc)
            included = self.src.load(inc)
            if inc.startswith("profiles/"):
                profiles.append(included["name"])
            else:
                attrs = merge_left(attrs, self._attributes_of(included)[0])
        return attrs, profiles

    def resolve(self, name: str, index: dict[str, str]) -> dict[str, Any]:
        """A class or object merged with everything it extends (own values win)."""
        path = index[name]
        self.used_files.add(path)
        defn = self.src.load(path)
        attrs, profiles = self._attributes_of(defn)
        chain = [name]
        parent_name = defn.get("extends")
        if parent_name and parent_name != name:
            parent = self.resolve(parent_name, index)
            attrs = merge_left(attrs, parent["attributes"])
            profiles = profiles + [p for p in parent["profiles"] if p not in profiles]
            chain += parent["extends_chain"]
            for key in ("constraints", "observable", "category"):
                if key not in defn and key in parent:
                    defn[key] = parent[key]
        return {**defn, "attributes": attrs, "profiles": profiles, "extends_chain": chain}

    # ---- attributes --------------------------------------------------------------------------

    def type_info(self, type_name: str) -> dict[str, Any]:
        if type_name in self.types:
            base = type_name
            while "type" in self.types[base]:
                base = self.types[base]["type"]
            return {"type": type_name, "base_type": base, "json_type": JSON_TYPES[base]}
        if type_name not in self.objects:
            raise SystemExit(f"type {type_name!r} is neither a data type nor an object")
        return {"type": "object_t", "base_type": "object_t", "json_type": "object", "object_type": type_name}

    def compile_attribute(self, name: str, local: dict[str, Any], owner: str) -> dict[str, Any]:
        if name not in self.dict_attrs:
            raise SystemExit(f"{owner}.{name} is not in dictionary.json")
        merged = merge_left(local, self.dict_attrs[name])
        requirement = merged.get("requirement", "optional")
        if requirement not in REQUIREMENTS:
            raise SystemExit(f"{owner}.{name}: unknown requirement {requirement!r}")
        out: dict[str, Any] = {"name": name, "requirement": requirement}
        out.update(self.type_info(merged["type"]))
        out["is_array"] = bool(merged.get("is_array", False))
        if "enum" in merged:
            out["enum"] = {str(k): v.get("caption") for k, v in merged["enum"].items()}
        for key in KEPT_KEYS:
            if key in merged:
                out[key.lstrip("@")] = merged[key]
        if "observable" not in out:  # by data type, else by object (as the server marks them)
            if merged["type"] in self.types:
                observable = self.types[merged["type"]].get("observable")
            else:
                observable = self.resolve(merged["type"], self.objects).get("observable")
            if observable is not None:
                out["observable"] = observable
        return out

    def compile_attributes(self, attrs: dict[str, Any], owner: str) -> dict[str, Any]:
        return {n: self.compile_attribute(n, a, owner) for n, a in sorted(attrs.items())}

    # ---- class -------------------------------------------------------------------------------

    def compile_class(self, class_name: str) -> dict[str, Any]:
        cls = self.resolve(class_name, self.events)
        category = cls.get("category")
        if category not in self.categories:
            raise SystemExit(f"class {class_name!r} has no known category ({category!r})")
        category_uid = self.categories[category]["uid"]
        class_uid = category_uid * 1000 + cls["uid"]
        attributes = self.compile_attributes(cls["attributes"], class_name)

        attributes["category_uid"]["enum"] = {str(category_uid): self.categories[category]["caption"]}
        attributes["class_uid"]["enum"] = {str(class_uid): cls["caption"]}
        activities = attributes["activity_id"]["enum"]
        attributes["type_uid"]["enum"] = {
            str(class_uid * 100 + int(k)): f"{cls['caption']}: {v}" for k, v in activities.items()
        }

        # Profile attributes, kept apart (profiles are optional); the class's own definition wins.
        profiles: dict[str, Any] = {}
        for profile_name in cls["profiles"]:
            path = f"profiles/{profile_name}.json"
            profile = self.src.load(path)
            p_attrs = {
                n: {**a, "profile": profile_name}
                for n, a in profile.get("attributes", {}).items()
                if n != "$include" and n not in cls["attributes"]
            }
            profiles[profile_name] = {
                "caption": profile.get("caption"),
                "description": profile.get("description"),
                "attributes": self.compile_attributes(p_attrs, f"{class_name}[{profile_name}]"),
            }

        objects, truncated = self.compile_objects([attributes] + [p["attributes"] for p in profiles.values()])
        if "observable" in objects:
            definition_files = set(self.used_files)
            objects["observable"]["attributes"]["type_id"]["enum"] = self.observable_types(
                objects["observable"]["attributes"]["type_id"]["enum"]
            )
            self.used_files = definition_files  # the scan of every object and event is not listed
        return {
            "ocsf_version": self.version,
            "class_name": class_name,
            "class_caption": cls["caption"],
            "class_uid": class_uid,
            "category_uid": category_uid,
            "category_name": category,
            "category_caption": self.categories[category]["caption"],
            "description": cls.get("description"),
            "extends_chain": cls["extends_chain"],
            "type_uid_formula": "class_uid * 100 + activity_id",
            "constraints": cls.get("constraints", {}),
            "attributes": attributes,
            "required_attributes": sorted(n for n, a in attributes.items() if a["requirement"] == "required"),
            "profiles": profiles,
            "objects": objects,
            "max_depth": self.max_depth,
            "truncated_objects": sorted(truncated),
            "types": self.compile_types(),
        }

    # ---- objects -----------------------------------------------------------------------------

    def compile_objects(self, roots: list[dict[str, Any]]) -> tuple[dict[str, Any], set[str]]:
        compiled: dict[str, Any] = {}
        depth_of: dict[str, int] = {}
        queue: deque[str] = deque()

        def refs(attrs: dict[str, Any], depth: int) -> None:
            for attr in attrs.values():
                obj = attr.get("object_type")
                if obj and obj not in depth_of:
                    depth_of[obj] = depth
                    queue.append(obj)

        for attrs in roots:
            refs(attrs, 1)
        while queue:
            name = queue.popleft()
            depth = depth_of[name]
            if depth > self.max_depth:
                continue
            obj = self.resolve(name, self.objects)
            attrs = self.compile_attributes(obj["attributes"], name)
            compiled[name] = {
                "name": name,
                "caption": obj.get("caption"),
                "description": obj.get("description"),
                "extends_chain": obj["extends_chain"],
                "depth": depth,
                "profiles": obj["profiles"],
                "constraints": obj.get("constraints", {}),
                "observable": obj.get("observable"),
                "deprecated": obj.get("@deprecated"),
                "attributes": attrs,
                "required_attributes": sorted(n for n, a in attrs.items() if a["requirement"] == "required"),
            }
            refs(attrs, depth + 1)

        truncated = {n for n, d in depth_of.items() if d > self.max_depth}
        for owner, obj in compiled.items():
            for attr in obj["attributes"].values():
                if attr.get("object_type") == owner:
                    attr["recursive"] = True
                if attr.get("object_type") in truncated:
                    attr["truncated"] = True
        return compiled, truncated

    def observable_types(self, enum: dict[str, str]) -> dict[str, str]:
        """The derived enum of observable.type_id: every observable id the schema declares.

        Dictionary attributes and types first; then objects (captioned by the base object
        that introduced the id) and object/event-specific attributes ("<Caption> Object: <attr>").
        """
        out = dict(enum)
        for attr in self.dict_attrs.values():
            if "observable" in attr:
                out[str(attr["observable"])] = attr["caption"]
        for t in self.types.values():
            if "observable" in t:
                out[str(t["observable"])] = t["caption"]
        for label, index in (("Object", self.objects), ("Event", self.events)):
            for name in sorted(index):
                chain = self.resolve(name, index)["extends_chain"]
                defns = [self.src.load(index[n]) for n in chain]
                if label == "Object" and "observable" in defns[0]:
                    oid = defns[0]["observable"]
                    owner = [d for d in defns if d.get("observable") == oid][-1]
                    out.setdefault(str(oid), owner["caption"])
                for attr_name, attr in defns[0].get("attributes", {}).items():
                    if isinstance(attr, dict) and "observable" in attr:
                        oid = attr["observable"]
                        owner = [
                            d for d in defns if d.get("attributes", {}).get(attr_name, {}).get("observable") == oid
                        ][-1]
                        out.setdefault(str(oid), f"{owner['caption']} {label}: {attr_name}")
        return dict(sorted(out.items(), key=lambda kv: int(kv[0])))

    def compile_types(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, t in sorted(self.types.items()):
            info = self.type_info(name)
            entry = {"caption": t.get("caption"), "base_type": info["base_type"], "json_type": info["json_type"]}
            for key in ("regex", "max_len", "range", "values", "observable"):
                if key in t:
                    entry[key] = t[key]
            out[name] = entry
        out["object_t"] = {
            "caption": "Object",
            "base_type": "object_t",
            "json_type": "object",
            "note": "not in dictionary.json; stands for attributes typed by an object (see object_type)",
        }
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", type=Path, required=True, help="ocsf-schema clone or bare git directory")
    parser.add_argument("--ref", help="git tag/commit to read (default: the files as they are on disk)")
    parser.add_argument("--class", dest="class_name", default="network_activity")
    parser.add_argument("--max-depth", type=int, default=3)
    parser.add_argument("--out", type=Path, help="output file (default: stdout)")
    args = parser.parse_args(argv)

    src = Source(args.schema, args.ref)
    compiler = Compiler(src, args.max_depth)
    result = compiler.compile_class(args.class_name)
    result["source"] = {
        "repository": "https://github.com/ocsf/ocsf-schema",
        "ref": args.ref,
        "commit": src.commit,
        "files": sorted(compiler.used_files),
        "license": "Apache-2.0",
        "compiled_by": "tests/data/ocsf/compile_class.py",
    }
    text = json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
