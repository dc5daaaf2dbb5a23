"""Phone actions: the agent loop that turns the model's replies into gestures on a phone.

actions (parse a reply), device (the Device protocol and a simulated phone), adb and hdc (a
real Android or HarmonyOS phone; command: what the two share), prompt and chat (the
conversation with the server), agent (the loop), cli (`autoglm agent`). It talks to the pipeline only through the OpenAI API, as the
Open-AutoGLM client does.
"""
