"""
nanoGPT-style configuration for train.py and sample.py: `python train.py [config/file.py] [--key=value ...]`.

The script keeps every knob as a global with its default. This module reads the optional config file (plain Python that
assigns some of those globals) and then the --key=value overrides, and checks every name and type against the
defaults, so a typo or a wrong type fails at once with one line instead of silently training the wrong model.
Nothing here imports torch, so a bad flag fails in a fraction of a second.
"""
import sys
from ast import literal_eval
from difflib import get_close_matches


class ConfigError(ValueError):
    pass


def _type_name(value):
    return type(value).__name__


def _check(key, value, defaults, source):
    """Return value converted to the type of defaults[key], or raise ConfigError naming the key and the type."""
    if key not in defaults:
        close = get_close_matches(key, defaults, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(defaults))}"
        raise ConfigError(f"unknown config key '{key}' (from {source}); {hint}")
    default = defaults[key]
    # bool is a subclass of int in Python, so test it first: --compile=1 is an error, not True.
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)   # 3 is fine for a float knob
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"config key '{key}' (from {source}) expects {_type_name(default)}, "
                          f"got {value!r} ({_type_name(value)})")
    return value


def _parse_value(raw, default):
    """'3e-4' -> 3e-4, 'True' -> True, 'gelu' -> 'gelu'; a string knob keeps the raw text (--wandb_run_name=2024)."""
    try:
        value = literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    if isinstance(default, str) and not isinstance(value, str):
        return raw
    return value


def read_config_file(path):
    """
    Run a config file (plain Python, nanoGPT style) and return the globals it set, {name: value}, leaving out names
    that start with '_', modules, functions and classes (imports and helpers are not settings). Values are returned
    as they are; the caller checks names and types. Raises ConfigError with one line naming the file (and the line,
    for a syntax error or an exception while it runs).
    """
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text; is it a Python config file?") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror}; "
                          f"arguments are a config file path or --key=value") from None
    try:
        code = compile(source, path, 'exec')
    except SyntaxError as e:   # IndentationError and TabError are SyntaxErrors too
        raise ConfigError(f"{path}:{e.lineno}: {e.msg} (syntax error in the config file)") from None
    except ValueError as e:   # e.g. a NUL byte in the source
        raise ConfigError(f"config file '{path}' is not Python source: {e}") from None
    namespace = {}
    try:
        exec(code, namespace)
    except (Exception, SystemExit) as e:   # SystemExit too: sys.exit(0) in a config file would end the run silently
        # the innermost line of the config file itself, not of whatever it called
        lines = [tb.tb_lineno for tb in _walk(e.__traceback__) if tb.tb_frame.f_code.co_filename == path]
        where = f"{path}:{lines[-1]}" if lines else path
        if isinstance(e, SystemExit):
            raise ConfigError(f"{where}: the config file calls sys.exit / raises SystemExit({e.code!r}); a config "
                              f"file only sets values (name = value)") from None
        raise ConfigError(f"{where}: {type(e).__name__}: {e} (while running the config file)") from None
    return {key: value for key, value in namespace.items()
            if not key.startswith('_') and not callable(value) and type(value).__name__ != 'module'}


def _walk(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def parse_config(argv, defaults):
    """
    argv: the command line after the script name; defaults: {key: default value}.
    Returns (config, explicit): config = defaults updated by the config file and the overrides (in that order),
    explicit = the set of keys the user set in either place (train.py checks those against a checkpoint on resume).
    Raises ConfigError with a one-line message on any problem.
    """
    config, explicit = dict(defaults), set()
    for arg in argv:
        if not arg.startswith('--'):
            # a config file: plain Python; every global it leaves behind must be a known knob
            for key, value in read_config_file(arg).items():
                config[key] = _check(key, value, defaults, arg)
                explicit.add(key)
        else:
            key, eq, raw = arg[2:].partition('=')
            if not eq:
                raise ConfigError(f"argument '{arg}' must look like --key=value")
            if key not in defaults:   # checked here too so the message is not about a parsed value
                _check(key, None, defaults, 'the command line')
            config[key] = _check(key, _parse_value(raw, defaults[key]), defaults, 'the command line')
            explicit.add(key)
    return config, explicit


def configure(script_globals, argv=None):
    """
    Apply the command line to a script's globals (nanoGPT style). Every global whose value is a bool, int, float or
    str and whose name does not start with '_' is a knob. On error: one line on stderr, exit status 2.
    Returns (config, explicit) as parse_config.
    """
    argv = sys.argv[1:] if argv is None else argv
    defaults = {k: v for k, v in script_globals.items()
                if not k.startswith('_') and isinstance(v, (bool, int, float, str))}
    try:
        config, explicit = parse_config(argv, defaults)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    script_globals.update(config)
    return config, explicit


DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N = 0, 1, ...), mps"


def device_name_problem(device):
    """None when `device` is a name torch knows (whether or not this machine has it), else one line. No torch needed,
    so a typo such as --device=gpu fails before the 2 s torch import; device_problem() then checks this machine."""
    if device in ('auto', 'cpu', 'cuda', 'mps'):
        return None
    if device.startswith('cuda:') and device[5:].isdigit():
        return None
    hint = " (for an NVIDIA GPU: --device=cuda)" if device.lower() in ('gpu', 'nvidia', 'cuda0') else ""
    return f"device={device!r} is not a device name{hint}; use one of {DEVICE_FORMS}"


def device_problem(device):
    """None when torch can use `device` on this machine, else one line naming the devices that are valid here.
    Imports torch, so scripts call it after the cheap checks."""
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    valid = ['auto', 'cpu'] + (['cuda'] + [f'cuda:{i}' for i in range(count)] if count else [])
    if torch.backends.mps.is_available():
        valid.append('mps')
    if device in valid:
        return None
    why = ''
    if device.startswith('cuda') and not count:
        why = ' (torch sees no CUDA GPU: a CPU-only torch build, no GPU, or CUDA_VISIBLE_DEVICES hides them)'
    elif device == 'mps':
        why = ' (MPS needs an Apple-silicon Mac)'
    return f"device={device!r} is not available here{why}; valid on this machine: {', '.join(valid)}"
