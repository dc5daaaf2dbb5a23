"""Stands in for the `adb` tool in tests (no phone is attached here): records each call's
arguments, one JSON list per line, to $FAKE_TOOL_LOG and answers as a phone would:
a PNG ($FAKE_TOOL_PNG) for screencap, Settings in front for dumpsys window, ADB Keyboard
installed. With $FAKE_TOOL_FAIL set, every call fails as adb does without a device."""
import json
import os
import sys

args = sys.argv[1:]
with open(os.environ["FAKE_TOOL_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
if os.environ.get("FAKE_TOOL_FAIL"):
    sys.stderr.write("error: no devices/emulators found\n")
    sys.exit(1)
if args[:2] == ["-s", "emu-1"]:
    args = args[2:]
answers = {
    ("shell", "dumpsys", "window"):
        "  mCurrentFocus=Window{1a2b u0 com.android.settings/com.android.settings.Settings}\n",
    ("shell", "settings", "get", "secure", "default_input_method"):
        "com.google.android.inputmethod.latin/.LatinIME\n",
    ("shell", "ime", "list", "-s"):
        "com.google.android.inputmethod.latin/.LatinIME\ncom.android.adbkeyboard/.AdbIME\n",
}
key = tuple(args)
if key == ("exec-out", "screencap", "-p"):
    sys.stdout.buffer.write(open(os.environ["FAKE_TOOL_PNG"], "rb").read())
elif key in answers:
    sys.stdout.write(answers[key])
elif args[:2] == ["shell", "monkey"]:
    sys.stdout.write("Events injected: 1\n" if args[3] != "com.missing" else
                     "** No activities found to run, monkey aborted.\n")
