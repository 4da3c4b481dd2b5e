"""A safe arithmetic/boolean expression evaluator for rule files (never ``eval``/``exec``).

Rule authors write checks such as ``abs(result - hqla / outflow * 100) <= 0.005``. The source is
parsed with :mod:`ast`, every node is checked against a whitelist and compiled into nested
closures; evaluation only ever runs those closures. Whitelisted: numbers, short string literals
(for equality tests), ``True``/``False``, names bound at evaluation time, ``+ - * / // % **``,
unary ``+ - not``, comparisons (including chains), ``and``/``or``, parentheses and the functions
``abs``, ``min``, ``max``, ``round``. Everything else (attributes, subscripts, other calls,
lambdas, comprehensions, f-strings, walrus, ...) is rejected.

Resource bounds keep hostile expressions cheap: source length, nesting depth, node count,
exponent size, ``round`` digits, function arity and the magnitude of every intermediate result
are all capped, so evaluation is O(size of the expression). Every problem — at compile or
evaluation time — raises :class:`SafeEvalError` and nothing else.
"""

from __future__ import annotations

import ast
import math
import operator
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from mixtune.errors import MixtuneError

MAX_SOURCE_LEN = 500
MAX_DEPTH = 40
MAX_NODES = 200
MAX_STR_LEN = 64
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100
MAX_ROUND_DIGITS = 15
MAX_ARGS = 16

Value = Any  # int | float | bool | str
Fn = Callable[[Mapping[str, Value]], Value]


class SafeEvalError(MixtuneError):
    """An expression was rejected or could not be evaluated."""


def _num(v: Value, what: str) -> int | float:
    # bool is an int subclass; allow it in arithmetic (True == 1) but never strings/None.
    if isinstance(v, (int, float)):
        return v
    raise SafeEvalError(f"{what} needs a number, got {type(v).__name__}")


def _bounded(v: Value) -> Value:
    """Reject non-finite, complex or oversized intermediate results."""
    if isinstance(v, bool) or isinstance(v, str):
        return v
    if isinstance(v, int):
        if abs(v) > MAX_MAGNITUDE:  # int/float comparison is exact and cheap
            raise SafeEvalError(f"result magnitude exceeds {MAX_MAGNITUDE:g}")
        return v
    if isinstance(v, float):
        if not math.isfinite(v) or abs(v) > MAX_MAGNITUDE:
            raise SafeEvalError(f"result is not finite or exceeds {MAX_MAGNITUDE:g}")
        return v
    raise SafeEvalError(f"result of type {type(v).__name__} is not allowed")


def _pow(a: Value, b: Value) -> Value:
    a, b = _num(a, "'**'"), _num(b, "'**'")
    if abs(b) > MAX_EXPONENT:
        raise SafeEvalError(f"exponent {b!r} exceeds the bound {MAX_EXPONENT}")
    return a**b


_BINOPS: dict[type, Callable[[Value, Value], Value]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _pow,
}
_CMPOPS: dict[type, Callable[[Value, Value], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _round(*args: Value) -> Value:
    if len(args) not in (1, 2):
        raise SafeEvalError("round() takes 1 or 2 arguments")
    x = _num(args[0], "round()")
    if len(args) == 1:
        return round(x)
    nd = args[1]
    if not isinstance(nd, int) or isinstance(nd, bool) or abs(nd) > MAX_ROUND_DIGITS:
        raise SafeEvalError(f"round() digits must be an integer within ±{MAX_ROUND_DIGITS}")
    return round(x, nd)


def _minmax(fn: Callable[..., Value], name: str) -> Callable[..., Value]:
    def call(*args: Value) -> Value:
        if not args:
            raise SafeEvalError(f"{name}() needs at least one argument")
        return fn(_num(a, f"{name}()") for a in args)

    return call


def _abs(*args: Value) -> Value:
    if len(args) != 1:
        raise SafeEvalError("abs() takes exactly one argument")
    return abs(_num(args[0], "abs()"))


_FUNCS: dict[str, Callable[..., Value]] = {
    "abs": _abs,
    "min": _minmax(min, "min"),
    "max": _minmax(max, "max"),
    "round": _round,
}


class SafeExpr:
    """A validated, compiled expression; call :meth:`evaluate` with a name → value mapping."""

    __slots__ = ("source", "names", "_fn")

    def __init__(self, source: str, names: frozenset[str], fn: Fn):
        self.source = source
        self.names = names
        self._fn = fn

    def evaluate(self, env: Mapping[str, Value] | None = None) -> Value:
        """Evaluate with ``env`` binding every name; raises only :class:`SafeEvalError`."""
        env = env or {}
        missing = self.names - env.keys()
        if missing:
            raise SafeEvalError(f"unbound name(s): {', '.join(sorted(missing))}")
        try:
            return _bounded(self._fn(env))
        except SafeEvalError:
            raise
        except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError) as e:
            # ZeroDivisionError, OverflowError, comparing str with number, ...
            raise SafeEvalError(f"cannot evaluate {self.source!r}: {type(e).__name__}: {e}") from None

    def __repr__(self) -> str:
        return f"SafeExpr({self.source!r})"


class _Compiler:
    def __init__(self, allowed_names: frozenset[str] | None):
        self.allowed = allowed_names
        self.names: set[str] = set()
        self.count = 0

    def compile(self, node: ast.AST, depth: int) -> Fn:
        self.count += 1
        if self.count > MAX_NODES:
            raise SafeEvalError(f"expression has more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise SafeEvalError(f"expression nests deeper than {MAX_DEPTH}")
        d = depth + 1
        if isinstance(node, ast.Constant):
            return self._constant(node.value)
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            op, lf, rf = _BINOPS[type(node.op)], self.compile(node.left, d), self.compile(node.right, d)
            sym = type(node.op).__name__

            def binop(env: Mapping[str, Value]) -> Value:
                a, b = lf(env), rf(env)
                if op is not _pow:
                    _num(a, sym), _num(b, sym)
                return _bounded(op(a, b))

            return binop
        if isinstance(node, ast.UnaryOp):
            f = self.compile(node.operand, d)
            if isinstance(node.op, ast.Not):
                return lambda env: not f(env)
            if isinstance(node.op, ast.USub):
                return lambda env: -_num(f(env), "unary '-'")
            if isinstance(node.op, ast.UAdd):
                return lambda env: +_num(f(env), "unary '+'")
        if isinstance(node, ast.BoolOp):
            parts = [self.compile(v, d) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda env: _and(parts, env)
            return lambda env: _or(parts, env)
        if isinstance(node, ast.Compare):
            if any(type(o) not in _CMPOPS for o in node.ops):
                raise SafeEvalError("only == != < <= > >= comparisons are allowed")
            ops = [_CMPOPS[type(o)] for o in node.ops]
            fns = [self.compile(node.left, d)] + [self.compile(c, d) for c in node.comparators]
            return lambda env: _compare(ops, fns, env)
        if isinstance(node, ast.Call):
            return self._call(node, d)
        raise SafeEvalError(f"{type(node).__name__} is not allowed in rule expressions")

    def _constant(self, v: object) -> Fn:
        if isinstance(v, bool) or (isinstance(v, (int, float)) and not isinstance(v, complex)):
            _bounded(v)
            return lambda env: v
        if isinstance(v, str):
            if len(v) > MAX_STR_LEN:
                raise SafeEvalError(f"string literal longer than {MAX_STR_LEN} characters")
            return lambda env: v
        raise SafeEvalError(f"literal of type {type(v).__name__} is not allowed")

    def _name(self, name: str) -> Fn:
        if name in ("True", "False"):
            value = name == "True"
            return lambda env: value
        if name in _FUNCS:
            raise SafeEvalError(f"function {name!r} may only be called")
        if self.allowed is not None and name not in self.allowed:
            raise SafeEvalError(f"unknown name {name!r}; known: {', '.join(sorted(self.allowed)) or '-'}")
        self.names.add(name)
        return lambda env: env[name]

    def _call(self, node: ast.Call, d: int) -> Fn:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
            raise SafeEvalError(f"only calls to {', '.join(sorted(_FUNCS))} are allowed")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise SafeEvalError("keyword and starred arguments are not allowed")
        if len(node.args) > MAX_ARGS:
            raise SafeEvalError(f"more than {MAX_ARGS} arguments")
        fn = _FUNCS[node.func.id]
        args = [self.compile(a, d) for a in node.args]
        return lambda env: _bounded(fn(*[a(env) for a in args]))


def _and(parts: list[Fn], env: Mapping[str, Value]) -> Value:
    v: Value = True
    for p in parts:
        v = p(env)
        if not v:
            return v
    return v


def _or(parts: list[Fn], env: Mapping[str, Value]) -> Value:
    v: Value = False
    for p in parts:
        v = p(env)
        if v:
            return v
    return v


def _compare(ops: list[Callable[[Value, Value], bool]], fns: list[Fn], env: Mapping[str, Value]) -> bool:
    left = fns[0](env)
    for op, f in zip(ops, fns[1:], strict=True):
        right = f(env)
        if isinstance(left, str) != isinstance(right, str) and op not in (operator.eq, operator.ne):
            raise SafeEvalError("cannot order a string against a number")
        if not op(left, right):
            return False
        left = right
    return True


def compile_expr(source: str, allowed_names: frozenset[str] | set[str] | None = None) -> SafeExpr:
    """Validate and compile ``source``; ``allowed_names`` (if given) restricts free names."""
    if not isinstance(source, str):
        raise SafeEvalError(f"expression must be a string, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_LEN:
        raise SafeEvalError(f"expression longer than {MAX_SOURCE_LEN} characters")
    if not source.strip():
        raise SafeEvalError("expression is empty")
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" etc. become our error, not noise
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        msg = getattr(e, "msg", None) or str(e) or type(e).__name__
        raise SafeEvalError(f"cannot parse {source!r}: {msg}") from None
    comp = _Compiler(frozenset(allowed_names) if allowed_names is not None else None)
    fn = comp.compile(tree.body, 0)
    return SafeExpr(source, frozenset(comp.names), fn)


def safe_eval(source: str, env: Mapping[str, Value] | None = None) -> Value:
    """Compile and evaluate ``source`` once (prefer :func:`compile_expr` in loops)."""
    return compile_expr(source).evaluate(env)
