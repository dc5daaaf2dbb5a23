"""Phone actions: the agent loop that turns the model's replies into gestures on a phone.

actions (parse a reply), device (the Device protocol and a simulated phone), adb (a real
phone over adb), prompt and chat (the conversation with the server), agent (the loop),
cli (`autoglm agent`). It talks to the pipeline only through the OpenAI API, as the
Open-AutoGLM client does.
"""
