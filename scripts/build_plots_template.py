"""Build the offline HTML template for `dvc plots show` / `dvc plots diff`.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so offline (or behind a proxy) only the
PNG plots appear. This script fetches pinned versions of the three packages from the npm registry with
`npm pack` (checking each tarball against the integrity hash pinned here), inlines their minified
browser builds into `.dvc/plots/offline.html`, and writes the licences of the three packages and of
everything bundled into those builds to `.dvc/plots/THIRD_PARTY_LICENSES.txt`. Both files are
committed, so users need neither npm nor a network; `.dvc/config` points `plots.html_template` at the
template (DVC resolves a relative path there against `.dvc/`).

    python scripts/build_plots_template.py          # rebuild both files (make plots-template)
    python scripts/build_plots_template.py --check  # exit 1 if the committed files differ from a rebuild

Bumping a version: change PINNED (the integrity is `npm view <pkg>@<version> dist.integrity`); if the
build then reports a different set of bundled packages, update BUNDLED the same way. DVC 3.67's plot
specs are vega-lite v5 (`https://vega.github.io/schema/vega-lite/v5.json`): keep vega 5, vega-lite 5
and vega-embed 6.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"
LICENSES = TEMPLATE.with_name("THIRD_PARTY_LICENSES.txt")

# The three packages inlined, in load order: name -> (version, npm integrity of the tarball, browser build).
PINNED = {
    "vega": (
        "5.33.1",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
        "build/vega.min.js",
    ),
    "vega-lite": (
        "5.23.0",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
        "build/vega-lite.min.js",
    ),
    "vega-embed": (
        "6.29.0",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
        "build/vega-embed.min.js",
    ),
}


def packages(table: str) -> dict[str, tuple[str, str]]:
    """name -> (version, npm integrity) from lines of `name version integrity`."""
    return {name: (version, integrity) for name, version, integrity in map(str.split, table.strip().splitlines())}


# Third-party packages compiled into those builds (read from each build's source map, which the build
# checks against this list), fetched only for their licence texts: name -> (version, integrity).
BUNDLED = packages("""
d3-array                       3.2.5   sha512-Th8qGXoBalmWsstpkuhmBuTsBQIFqYOJtjlBvNVvBfJ8E3uYusBUwUR8HU20U0qKKQkgCvKyR1YjiozWadk5QA==
d3-color                       3.1.1   sha512-lfab8x0Bj0UO7SNsY8dZSbNIA6ipbkE3X0NG9nqjCu6CfCHZseuDnOSJY7hidKrjpP++i1M2qT+FlAdPKYRilA==
d3-delaunay                    6.0.6   sha512-DMQIEvSJhZCB6pwedcXaAlQ+MeKU5LlM2XakKtc73b/VM+RBiI1SRXycOEOKg2jsKj4zZ9F0KGYG6nCGwwWu/g==
d3-dispatch                    3.0.2   sha512-sAzH4Y4nsLo8eSqw5jKiZt+LU2wZmL/qS+OkxQGjhwazB/D7TY34R/QK1eshfGr7cZEKymKZ/Haem7m+lu98Sg==
d3-dsv                         3.0.2   sha512-FUnXhX7I4/AXyRCZzwfZTDGSq8PGZ4oR0tiCBqNGOZMsDrQ+6sIWNQnBzcCGhzJKZ6uCvCezTwflUqI209RRiQ==
d3-force                       3.0.1   sha512-kAaaHLFebBYwgi5cYBXAI8vKrQFMCD2MEswj2QuPKKbdU1wYLc8WXtS7O8F/b6POCIe3gJjY6hkDstHi1yMETQ==
d3-format                      3.1.3   sha512-+F+/49swqmGuQJmSKnVMIDH/QkEFV5li9QRj0xm/KhyAUBv099O5PrvpQFxBp24PYph17Mnvt9mjKQV0ii0nMA==
d3-geo                         3.1.2   sha512-5R8ZgDQorIxmauv7R6gpE/ndz+Z0qAZssigq0aXFdvPHdY41RqtW02jrRUQAL724NdPABYXo1+gQEGBBr7uKNg==
d3-geo-projection              4.0.0   sha512-p0bK60CEzph1iqmnxut7d/1kyTmm3UWtPlwdkM31AU+LW+BXazd5zJdoCn7VFxNCHXRngPHRnsNn5uGjLRGndg==
d3-hierarchy                   3.1.3   sha512-GRajN5ZcnEwYFWqqdzhG1qJ3+fDg6WWzk47TJg7ePY7yvYAgRfD2r1mUx+wviBOWuCwamCUzjwMSdato43jbGA==
d3-interpolate                 3.0.2   sha512-IRzGU62DtxhvsnSTWMQIdnoZ6gA+BCWwBon1EJI6SjoN595799b6z/QRBzXfFhE8iupUPp3042yBNo0STPqnzQ==
d3-path                        3.1.1   sha512-jsbgV8zIT38ReB9O7X7gcLndTQRONSqNNd+oGIaTBdUug4r5jFmp0N6RY9R5GWbdUDucn0qoTGyfjapT4tDhcg==
d3-quadtree                    3.0.2   sha512-9Lu9mqJKRbIk0d6mKDjpvPURaPdwHVK5CYbcdd0/4vBgz4ldz/7TIOse3kNERsByGNfld58KEco507AztJWyTQ==
d3-scale                       4.0.3   sha512-66cWobCNzcMvlfoaDHCxuIv9TBUWG1BLOWdv9kHHFuCr1JdqAWPvTmsaEYDD5NRMyWZ5+7u0GqiCDfMXMqh3hg==
d3-scale-chromatic             3.1.1   sha512-lA5gfN2yMvmChubmptnDiBfeGpHD7Yb1EbvCz0TZE0WHXhyR6W2allPuhKtzV5ILQRqeOdefF0qYtERReLUBDg==
d3-shape                       3.2.1   sha512-dm2o+lbKdzg9tY7GEag/dB9hcbodLfwkE/DkvqbELJXaMz0yKzWWhZqhbI7CKubukA7HnRyz0avdtvi7EPxPvw==
d3-time                        3.1.1   sha512-Ze7rjrhMzdeulh0/hjcfFj7XLAHOfowtEMfsoG6DU866HPynQNW7Wfen6hzXcqKTv8XzxvF6Hzr5XD6bMHr2ug==
d3-time-format                 4.1.1   sha512-22XaqjyCjpqgda20erhsOjGmC3vvYwTNYniKAd45W5UWLDF43moeOuV9qYpRqobIlsnK0UhnKZjUUJm3VgORUA==
d3-timer                       3.0.2   sha512-1Il1aliroVSErrv5aulRBxAY+7+DnaoLIWGd1C6SsBTWDeobWiP/V69vwb8vT6abR1kKwaNe1196pmaQ1fK90A==
delaunator                     5.1.0   sha512-AGrQ4QSgssa1NGmWmLPqN5NY2KajF5MqxetNEO+o0n3ZwZZeTmt7bBnvzHWrmkZFxGgr4HdyFgelzgi06otLuQ==
fast-json-patch                3.1.1   sha512-vf6IHUX2SBcA+5/+4883dsIjpBTqmfBjmYiWK1savxQmFk4JfBMLa7ynTYOs1Rolp/T1betJxHiGD3g1Mn8lUQ==
internmap                      2.0.3   sha512-5Hh7Y1wQbvY5ooGgPbDaL5iYLAPzMTUrjMulskHLH6wnv/A+1q5rgEaiuqEjB+oxGXIVZs1FF+R/KPN3ZSQYYg==
json-stringify-pretty-compact  4.0.0   sha512-3CNZ2DnrpByG9Nqj6Xo8vqbjT4F6N+tb4Gb28ESAZjYZ5yqvmc56J+/kuIwkaAMOyblTQhUW7PxMkUb8Q36N3Q==
robust-predicates              3.0.3   sha512-NS3levdsRIUOmiJ8FZWCP7LG3QpJyrs/TE0Zpf1yvZu8cAJJ6QMW92H1c7kWpdIHo8RvmLxN/o2JXTKHp74lUA==
semver                         7.8.6   sha512-9lpSSU4Mly3mrtruwLs1eLK6+gzbzqeBFwRNjIjE+9LuDpWdYctrQlQ3ej1Ilgi7gknpsTRnPoLP8DpCHqHIJw==
topojson-client                3.1.0   sha512-605uxS6bcYxGXw9qi62XyrV6Q3xwbndjachmNxu8HWTtVPxZfEJN9fd/SZS1Q54Sn2y0TMyMxFj/cJINqGHrKw==
vega-schema-url-parser         2.2.0   sha512-yAtdBnfYOhECv9YC70H2gEiqfIbVkq09aaE4y/9V/ovEFmH9gPKaEgzIZqgT7PSPQjKhsNkb6jk6XvSoboxOBw==
vega-themes                    2.15.0  sha512-DicRAKG9z+23A+rH/3w3QjJvKnlGhSbbUXGjBvYGseZ1lvj9KQ0BXZ2NS/+MKns59LNpFNHGi9us/wMlci4TOA==
vega-tooltip                   0.35.2  sha512-kuYcsAAKYn39ye5wKf2fq1BAxVcjoz0alvKp/G+7BWfIb94J0PHmwrJ5+okGefeStZnbXxINZEOKo7INHaj9GA==
""")

# The vega tarball ships no LICENSE file; the vega monorepo's BSD-3-Clause text is taken from
# vega-canvas, a package of the same monorepo that is compiled into vega.min.js.
LICENSE_DONOR = {"vega": ("vega-canvas", "1.2.7")}
DONORS = {
    "vega-canvas": (
        "1.2.7",
        "sha512-OkJ9CACVcN9R5Pi9uF6MZBF06pO6qFpDYHWSKBJsdHP5o724KrsgR6UvbnXFH82FdsiTOff/HqjuaG8C7FL+9Q==",
    ),
}

# Packages of the vega monorepo (covered by vega's licence) that a build may compile in.
VEGA_MONOREPO_PREFIX = "vega-"
OWN_REPOS = {"vega-themes", "vega-tooltip", "vega-schema-url-parser"}  # separate repositories, own licences

# DVC fills these with str.replace; none may occur in the inlined code.
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


def npm_pack(specs: list[str], dest: Path) -> dict[str, Path]:
    """`npm pack` every spec into ``dest``: package name -> tarball."""
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm is not installed: it fetches the pinned packages from the npm registry")
    result = subprocess.run(
        [npm, "pack", *specs, "--json", "--pack-destination", str(dest)],
        capture_output=True,
        text=True,
        cwd=dest,
    )
    if result.returncode != 0:
        sys.exit(f"npm pack failed:\n{result.stderr}")
    return {entry["name"]: dest / entry["filename"] for entry in json.loads(result.stdout)}


def check_integrity(tarball: Path, expected: str) -> None:
    algorithm, _, digest = expected.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if actual != digest:
        sys.exit(f"{tarball.name}: integrity {algorithm}-{actual} is not the pinned {expected}")


def member(tarball: Path, *names: str) -> tuple[str, str] | None:
    """The first of ``names`` (paths inside the package) found in the tarball: (name, text)."""
    with tarfile.open(tarball) as archive:
        present = {m.name.removeprefix("package/"): m for m in archive.getmembers() if m.isfile()}
        for name in names:
            if name in present:
                return name, archive.extractfile(present[name]).read().decode("utf-8")
    return None


def bundled_packages(source_map: str) -> set[str]:
    """Third-party npm packages whose sources a build's source map lists (node_modules/<name>/...)."""
    found = set()
    for source in json.loads(source_map)["sources"]:
        parts = source.split("/")
        if "node_modules" in parts:
            rest = parts[len(parts) - parts[::-1].index("node_modules") :]
            found.add("/".join(rest[:2]) if rest[0].startswith("@") else rest[0])
        else:  # a sibling package of the monorepo: ../../vega-util/build/...
            names = [p for p in parts if p not in ("..", ".")]
            if names and names[0].startswith(VEGA_MONOREPO_PREFIX):
                found.add(names[0])
    return found


def license_text(tarball: Path) -> str:
    found = member(tarball, "LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING", "UNLICENSE")
    if found is None:
        sys.exit(f"{tarball.name} holds no licence file")
    return found[1].strip()


def safe_script(code: str, name: str) -> str:
    """Code that can sit inside <script>...</script> and pass DVC's placeholder replacement unchanged."""
    for placeholder in DVC_PLACEHOLDERS:
        if placeholder in code:
            sys.exit(f"{name} contains DVC's placeholder {placeholder}: it would be replaced when DVC renders")
    if "<!--" in code:
        sys.exit(f"{name} contains '<!--', which changes how HTML parses a script element")
    # "</script" ends the element wherever it appears; inside JS strings and regexes "<\/" means the same.
    return code.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def license_of(tarball: Path) -> str:
    with tarfile.open(tarball) as archive:
        return json.load(archive.extractfile("package/package.json"))["license"]


def build() -> tuple[str, str]:
    """(template, licences) built from the pinned packages."""
    wanted = {name: (version, integrity) for name, (version, integrity, _) in PINNED.items()}
    wanted |= BUNDLED | DONORS
    with tempfile.TemporaryDirectory(prefix="plots-template-") as tmp:
        tarballs = npm_pack([f"{name}@{version}" for name, (version, _) in wanted.items()], Path(tmp))
        for name, (_, integrity) in wanted.items():
            check_integrity(tarballs[name], integrity)

        scripts, seen = [], set()
        for name, (version, _, build_file) in PINNED.items():
            code = member(tarballs[name], build_file)
            source_map = member(tarballs[name], build_file + ".map")
            if code is None or source_map is None:
                sys.exit(f"{name}@{version} has no {build_file} (or its source map)")
            bundled = bundled_packages(source_map[1])
            seen |= {p for p in bundled if not p.startswith(VEGA_MONOREPO_PREFIX) or p in OWN_REPOS}
            scripts.append((name, version, license_of(tarballs[name]), safe_script(code[1].strip(), build_file)))
        if seen != set(BUNDLED):
            sys.exit(
                "the builds bundle other third-party packages than BUNDLED lists: "
                f"missing {sorted(seen - set(BUNDLED))}, no longer bundled {sorted(set(BUNDLED) - seen)}"
            )

        licences = [
            "Third-party software inlined in offline.html (the HTML template for `dvc plots show` / `dvc plots diff`).",
            "Rebuilt by scripts/build_plots_template.py (make plots-template) from the npm registry.",
            "",
            "The three packages inlined, and the packages their minified browser builds compile in",
            "(read from the builds' source maps; licence texts from the versions listed):",
            "",
        ]
        sections = []
        for name, version, spdx, _ in scripts:
            donor = LICENSE_DONOR.get(name)
            text = license_text(tarballs[donor[0]] if donor else tarballs[name])
            note = f" (the vega monorepo's licence, as shipped in {donor[0]}@{donor[1]})" if donor else ""
            licences.append(f"  {name} {version}  {spdx}{note}")
            sections.append((f"{name} {version} ({spdx})", text))
        licences.append(
            "  the vega monorepo's own packages compiled in (vega-util, vega-scenegraph, ...): vega's licence"
        )
        for name in sorted(BUNDLED):
            spdx = license_of(tarballs[name])
            licences.append(f"  {name} {BUNDLED[name][0]}  {spdx}")
            sections.append((f"{name} {BUNDLED[name][0]} ({spdx})", license_text(tarballs[name])))
        for title, text in sections:
            licences += ["", "=" * 100, title, "=" * 100, "", text]

    header = "\n".join(
        f"       {name} {version} ({spdx}), https://www.npmjs.com/package/{name}: {PINNED[name][2]}"
        for name, version, spdx, _ in scripts
    )
    body = "\n".join(
        f"    <script>/* {name} {version}, {spdx} */\n{code}\n    </script>" for name, version, spdx, code in scripts
    )
    template = TEMPLATE_HTML.replace("@HEADER@", header).replace("@SCRIPTS@", body)
    return template, "\n".join(licences) + "\n"


# DVC replaces the plot placeholders below; the scripts one is left out on purpose, so that DVC's CDN
# script tags never enter the page.
TEMPLATE_HTML = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!--
    The DVC plots page, offline: vega, vega-lite and vega-embed are inlined below instead of loaded from
    a CDN, so the vega-lite plots render without a network. Generated by scripts/build_plots_template.py
    (make plots-template); do not edit by hand. Inlined (licence texts in THIRD_PARTY_LICENSES.txt beside
    this file, which also lists the packages these builds compile in):
@HEADER@
    -->
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
@SCRIPTS@
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare the committed files with a rebuild")
    args = parser.parse_args()
    template, licences = build()
    outputs = {TEMPLATE: template, LICENSES: licences}
    if args.check:
        stale = [
            str(p.relative_to(ROOT)) for p, text in outputs.items() if not p.exists() or p.read_text("utf-8") != text
        ]
        if stale:
            print("out of date (run make plots-template): " + ", ".join(stale))
            return 1
        print("up to date")
        return 0
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)} ({len(text.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
