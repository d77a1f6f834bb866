"""The OpenAI-compatible HTTP layer of `specli serve`: request models, SSE, queue, auth.

The only package importing the ASGI stack (FastAPI/Starlette, uvicorn, pydantic). It is
thin: requests are validated at the edge (`protocol`), generations run one at a time on
one worker thread that reads the conversation core (`worker`), responses take OpenAI's
shapes (`responses`), and every error leaves in OpenAI's error shape from one place
(`errors`). `app` wires the routes; `main` binds, loads the models and runs uvicorn.
Nothing here is imported by `specli --help` or by the engine.
"""
