#!/usr/bin/python3
"""Drives matrix-link-gtk through AT-SPI (pyatspi), for tests/tests/gtk_app.rs.

    atspi_driver.py [--timeout S] COMMAND ARGS...

Commands (each waits up to the timeout for its widget, then prints one JSON line):
    visible                 the (role, name) of every widget shown
    wait NAME [ROLE]        a shown widget named NAME (exact), e.g. a label, or a page ("panel")
    wait-prefix PREFIX      a shown widget whose name starts with PREFIX; prints its name
    click NAME              a shown, sensitive push button named NAME: its "click" action
    enter NAME TEXT         a shown text field named NAME: its text (EditableText)
    digits                  the name of the shown label that is a two-digit number
    uncovered NAME          a shown push button named NAME that no other named widget overlaps
                            (a toast, say); "covering" lists those that do

The output's "visible" lists what was shown when the command succeeded, for the test to check
each step's widgets. GTK 4.8 removes hidden stack pages from the tree (the app marks them hidden).
Exit status 1 (and "error") when the widget did not appear in time.
"""
import json
import re
import sys
import time

import pyatspi

APP = "matrix-link-gtk"


def button_name(name):
    """A button's label: without mnemonic underlines, and once (libadwaita 1.2's dialog buttons
    are named after their label twice)."""
    name = name.replace("_", "")
    half = len(name) // 2
    if len(name) % 2 == 1 and name[half] == " " and name[:half] == name[half + 1:]:
        return name[:half]
    return name


def shown(acc, out):
    try:
        states = acc.getState()
        if not states.contains(pyatspi.STATE_VISIBLE):
            return
        role = acc.getRoleName()
        name = acc.name or ""
        sensitive = states.contains(pyatspi.STATE_SENSITIVE)
        out.append((role, button_name(name) if role == "push button" else name, sensitive, acc))
        for child in acc:
            if child is not None:
                shown(child, out)
    except Exception:  # a widget went away while we walked
        return


def snapshot():
    out = []
    desktop = pyatspi.Registry.getDesktop(0)
    for app in desktop:
        if app is not None and app.name == APP:
            for window in app:
                if window is not None:
                    shown(window, out)
    return out


def visible_list(items):
    seen = []
    for role, name, _, _ in items:
        if name and not name.startswith(("Gtk", "Adw")) and [role, name] not in seen:
            seen.append([role, name])
    return seen


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while True:
        items = snapshot()
        for item in items:
            if pred(item):
                return item, items
        if time.monotonic() > deadline:
            return None, items
        time.sleep(0.2)


def extents(acc):
    box = acc.queryComponent().getExtents(pyatspi.WINDOW_COORDS)
    return (box.x, box.y, box.width, box.height)


def lineage(acc):
    """acc and its ancestors."""
    out = []
    while acc is not None and len(out) < 100:
        out.append(acc)
        acc = acc.parent
    return out


def covering(target, items):
    """The shown, named widgets other than target, its ancestors and its descendants whose
    extents overlap target's."""
    tx, ty, tw, th = extents(target)
    ancestors = lineage(target)
    out = []
    for role, name, _, acc in items:
        if not name or any(acc == a for a in ancestors) or any(target == a for a in lineage(acc)):
            continue
        try:
            x, y, w, h = extents(acc)
        except Exception:
            continue
        if x < tx + tw and tx < x + w and y < ty + th and ty < y + h and w > 0 and h > 0:
            out.append([role, name, [x, y, w, h]])
    return out


def main(argv):
    timeout = 30.0
    if argv[:1] == ["--timeout"]:
        timeout = float(argv[1])
        argv = argv[2:]
    cmd, args = argv[0], argv[1:]
    result = {"ok": True}
    if cmd == "visible":
        items = snapshot()
    elif cmd == "wait":
        hit, items = wait_for(lambda i: i[1] == args[0] and (len(args) < 2 or i[0] == args[1]), timeout)
        result["ok"] = hit is not None
    elif cmd == "wait-prefix":
        hit, items = wait_for(lambda i: i[1].startswith(args[0]), timeout)
        result["ok"] = hit is not None
        result["name"] = hit[1] if hit else None
    elif cmd == "click":
        hit, items = wait_for(lambda i: i[0] == "push button" and i[1] == args[0] and i[2], timeout)
        result["ok"] = hit is not None
        if hit:
            action = hit[3].queryAction()
            names = [action.getName(n) for n in range(action.nActions)]
            action.doAction(names.index("click") if "click" in names else 0)
    elif cmd == "enter":
        hit, items = wait_for(lambda i: i[0] == "text" and i[1] == args[0] and i[2], timeout)
        result["ok"] = hit is not None
        if hit:
            hit[3].queryEditableText().setTextContents(args[1])
    elif cmd == "uncovered":
        hit, items = wait_for(lambda i: i[0] == "push button" and i[1] == args[0], timeout)
        result["ok"] = hit is not None
        if hit:
            result["extents"] = list(extents(hit[3]))
            result["covering"] = covering(hit[3], items)
            result["ok"] = not result["covering"]
    elif cmd == "digits":
        hit, items = wait_for(lambda i: i[0] == "label" and re.fullmatch(r"\d\d", i[1]) is not None, timeout)
        result["ok"] = hit is not None
        result["name"] = hit[1] if hit else None
    else:
        print(json.dumps({"ok": False, "error": f"unknown command {cmd}"}))
        return 2
    result["visible"] = visible_list(items)
    if not result["ok"]:
        result["error"] = f"{cmd} {' '.join(args)}: not shown within {timeout:.0f} s"
        if result.get("covering"):
            result["error"] = f"{cmd} {' '.join(args)}: covered by {result['covering']}"
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
