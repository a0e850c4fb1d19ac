"""Render a KernelSpec into HIP/CUDA source with one strict Jinja environment over templates/."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

from .families import get_family
from .spec import KernelSpec


def templates_dir() -> Path:
    """templates/ beside the package in a source tree, jitkern/templates/ in an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "prelude.h.j2").exists():
            return candidate
    raise FileNotFoundError(f"jitkern templates not found beside {here}")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True, autoescape=False)


def context(spec: KernelSpec) -> dict:
    family = get_family(spec.family)
    target = spec.target
    ctx = dict(family=spec.family, entry=family.entry, fmt=spec.fmt, bits=spec.bits, group=spec.group,
               m=spec.m, act=spec.act, arch=spec.arch, base_arch=target.base, vendor=target.vendor,
               wave=spec.wave, sm=target.sm, uri=spec.uri)
    ctx.update(spec.opts)
    ctx.update(family.consts(spec))
    return ctx


@lru_cache(maxsize=512)
def render(spec: KernelSpec) -> str:
    family = get_family(spec.family)
    return environment().get_template(family.template).render(**context(spec))
