"""Run by vionetctl: `vionetctl top` on a terminal, drawn with curses.

top.py computes the rows; this draws them: a title line (the time, the
interfaces, the sort), the table, and the keys at the bottom. The screen is
redrawn every refresh (args.d) and at once after a key; getch() waits at
most TICK, so q is seen within that, and the daemon is asked once per
refresh, never per key.
"""
import curses
import time

from vionetd import top

TICK = 0.1          # seconds getch() waits for a key


class Screen:
    def __init__(self, win, args, sampler):
        self.win, self.args, self.sampler = win, args, sampler
        self.sort, self.reverse = args.o, False
        self.table = []
        self.refreshes = 0

    def refresh(self):
        self.table = self.sampler.next()
        self.refreshes += 1

    def draw(self):
        self.win.erase()
        height, width = self.win.getmaxyx()
        title = "vionetctl top - %s - %d interface(s), sorted by %s%s" % (
            time.strftime("%H:%M:%S"), len(self.table), self.sort,
            " (reversed)" if self.reverse else "")
        text = [title, ""] + top.lines(top.ordered(self.table, self.sort, self.reverse))
        for y, line in enumerate(text[:height - 1]):
            self.win.addnstr(y, 0, line, width - 1, curses.A_BOLD if y == 2 else 0)
        self.win.addnstr(height - 1, 0, top.HELP_LINE, width - 1, curses.A_REVERSE)
        self.win.refresh()

    def key(self, k):
        """Act on a key; False to quit."""
        if k in (ord("q"), ord("Q")):
            return False
        name = top.SORT_KEYS.get(chr(k)) if 0 <= k < 256 else None
        if name is not None:
            self.reverse = not self.reverse if name == self.sort else False
            self.sort = name
            self.draw()
        return True

    def loop(self):
        self.refresh()
        self.draw()
        due = time.monotonic() + self.args.d
        while True:
            k = self.win.getch()
            if k != -1 and not self.key(k):
                return 0
            if time.monotonic() >= due:
                if self.args.n and self.refreshes > self.args.n:
                    return 0
                self.refresh()
                self.draw()
                due += self.args.d


def run(args, sampler):
    def inside(win):
        try:
            curses.curs_set(0)
        except curses.error:
            pass            # a terminal that cannot hide the cursor
        win.timeout(int(TICK * 1000))
        return Screen(win, args, sampler).loop()
    return curses.wrapper(inside)
