"""
The divergence guard of train.py: which evaluations may be saved, and when a run has diverged for good.

A checkpoint is "good" only while the run is not diverging. A blowing-up run often passes through moderate-looking
losses before the NaN (seen: 6.7e9, then exactly ln(vocab), i.e. uniform predictions from weights around 2e12), so one
far-off loss marks the run as diverged until a val loss clearly beats both the best seen and chance level. A run that
ends still diverged (or whose loss becomes non-finite) did not produce a result: train.py exits with status 3 and a
last line starting with 'diverged:', and summary.json says "outcome": "diverged".
"""
import math


class DivergenceGuard:
    def __init__(self, vocab_size, best_val_loss=math.inf, say=print):
        self.chance_loss = math.log(vocab_size)   # the loss of predicting every token as equally likely
        self.best_val_loss = best_val_loss        # the best val loss of a good (saved) evaluation
        self.diverged, self.since = False, None   # diverging now, and since which iteration
        self.say = say

    def is_diverging(self, loss):
        """Far above the best val loss seen (or chance level, whichever is lower), or back at chance level after the
        run had learned something."""
        reference = min(self.best_val_loss, self.chance_loss)
        learned = self.best_val_loss < 0.95 * self.chance_loss
        return not math.isfinite(loss) or loss > 2 * reference or (learned and loss >= self.chance_loss)

    def has_recovered(self, loss):
        """After a divergence: a new best that is clearly better than uniform predictions (a blown-up model sits at
        chance level, which can look like a 'best' early in a run)."""
        return loss < self.best_val_loss and loss < 0.98 * self.chance_loss

    def mark(self, iter_num):
        if not self.diverged:
            self.diverged, self.since = True, iter_num

    def watch_train_loss(self, loss, iter_num):
        if self.is_diverging(loss) and not self.diverged:
            self.mark(iter_num)
            self.say(f"warning: train loss {loss:.4g} at iter {iter_num} is far above the best val loss "
                     f"({self.best_val_loss:.4f}): the run is diverging; no checkpoint is saved until it recovers")

    def judge_val_loss(self, loss, iter_num, kept=''):
        """(may these weights be saved, are they a new best). A diverging run must not replace the last good ckpt.pt
        (nor ckpt_best.pt) before it turns into NaN."""
        if self.is_diverging(loss):
            self.mark(iter_num)
        elif self.diverged and self.has_recovered(loss):
            self.diverged, self.since = False, None
            self.say(f"note: val loss {loss:.4f} is a new best: the run has recovered; checkpoints are saved again")
        if self.diverged:
            self.say(f"warning: val loss {loss:.4f} at iter {iter_num} (best {self.best_val_loss:.4f}): the run is "
                     f"diverging; not saved{', ' + kept if kept else ''}")
            return False, False
        improved = loss < self.best_val_loss
        if improved:
            self.best_val_loss = loss
        return True, improved


def advice(c):
    """What to change after a run blew up ({knob: value}); --grad_clip=1.0 only when clipping is off (the default
    clips). The rates are read from the settings as they are, so a new schedule needs no change here."""
    lines = [f"a lower --learning_rate (now {c['learning_rate']:g})"]
    if c.get('warmup_iters') is not None:
        lines.append(f"a longer --warmup_iters (now {c['warmup_iters']})")
    if c['grad_clip'] == 0:
        lines.append("--grad_clip=1.0 (clipping is off)")
    elif c['grad_clip'] > 1:
        lines.append(f"a smaller --grad_clip (now {c['grad_clip']:g})")
    if c['dtype'] == 'float16':
        lines.append("--dtype=bfloat16 instead of float16, where the device supports it")
    return ', '.join(lines)
