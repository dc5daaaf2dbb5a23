"""Stands in for the `hdc` tool in tests (no HarmonyOS phone is attached here): records each
call's arguments, one JSON list per line, to $FAKE_TOOL_LOG and answers as hdc and a phone
would: `file recv` copies $FAKE_TOOL_PNG to the local path, `aa dump -l` lists two missions with
Settings in front, `aa start` succeeds except for com.missing. hdc's habit is kept: failures
are "[Fail]..." on stdout with exit status 0. $FAKE_TOOL_FAIL: every call fails as hdc does
without a device; $FAKE_HDC_REFUSE: the screen refuses capture (no file to fetch);
$FAKE_HDC_HOME: the home screen (the launcher, SceneBoard) is in front."""
import json
import os
import shutil
import sys

args = sys.argv[1:]
with open(os.environ["FAKE_TOOL_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
if os.environ.get("FAKE_TOOL_FAIL"):
    print("[Fail]ExecuteCommand need connect-key? please confirm a device by help info")
    sys.exit(0)
if args[:2] == ["-t", "hm-1"]:
    args = args[2:]
MISSIONS = """\
  Mission ID #12  mission name #[#com.ohos.sceneboard:entry:MainAbility]
    bundle name [com.ohos.sceneboard]
    state #BACKGROUND
  Mission ID #139  mission name #[#com.huawei.hmos.settings:entry:MainAbility]
    app name [com.huawei.hmos.settings]
    bundle name [com.huawei.hmos.settings]
    ability type [PAGE]
    state #FOREGROUND
    app state #FOREGROUND
"""
if args[:2] == ["file", "recv"]:
    if os.environ.get("FAKE_HDC_REFUSE"):
        print(f"[Fail]Error opening file: no such file or directory, path:{args[2]}")
    else:
        shutil.copyfile(os.environ["FAKE_TOOL_PNG"], args[3])
        print("FileTransfer finish, Size:1000, File count = 1, time:12ms rate:83.33kB/s")
elif args == ["shell", "aa", "dump", "-l"]:
    sys.stdout.write(MISSIONS.replace("BACKGROUND", "FOREGROUND", 1)
                     if os.environ.get("FAKE_HDC_HOME") else MISSIONS)
elif args[:3] == ["shell", "aa", "start"]:
    print("start ability successfully." if args[4] != "com.missing" else
          "error: failed to start ability.\nerror: bundle does not exist.")
