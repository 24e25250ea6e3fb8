#!/usr/bin/env python3
"""Chat templates rendered by Jinja2 itself, in the environment transformers renders them in
(tokenization_utils_base._compile_jinja_template: ImmutableSandboxedEnvironment with trim_blocks,
lstrip_blocks and loop controls, raise_exception, and a tojson filter that keeps non-ASCII text), for
tests/models/test_chat_jinja.cpp to compare graft's renderer with.

Writes one JSON line per (template, conversation, add_generation_prompt): the template's name and text,
the variables, and either "rendered" or "error" (the exception's class). Needs Debian's python3-jinja2.

  python3 make_chat_references.py --out DIR [--shared SHARED]
"""
import argparse
import json
import os

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def environment():
    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


# Templates written for this test in the shapes of well-known chat formats (Llama 2's [INST] with a
# <<SYS>> block and role alternation, Llama 3's headers, Gemma's turns without a system role, a ChatML
# with a default system prompt and `-` whitespace control), and two that exercise Jinja's rules.
TEMPLATES = {
    "inst_sys": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "headers": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
        "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "turns_no_system": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
    ),
    "chatml_default_system": (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "{%- else %}\n"
        "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) or "
        "message.role == 'assistant' %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"
    ),
    "features": (
        "{%- set ns = namespace(count=0, last='') -%}\n"
        "{%- for m in messages -%}\n"
        "{%- set ns.count = ns.count + 1 -%}\n"
        "{%- if m.role == 'system' %}[SYS:{{ m.content | upper }}]\n"
        "{%- elif m['role'] == 'user' -%}\n"
        "<u{{ loop.index }}/{{ loop.length }}>{{ m.content.strip() | replace('\\n', ' / ') }}"
        "{% if not loop.last %}|{% endif %}\n"
        "{%- else -%}\n"
        "<a>{{ (m.content | trim)[:12] ~ ('...' if m.content | length > 12 else '') }}</a>\n"
        "{%- endif -%}\n"
        "{%- set ns.last = m.role -%}\n"
        "{%- endfor %}\n"
        "count={{ ns.count }} last={{ ns.last }} roles={{ messages | map(attribute='role') | join(',') }}\n"
        "{{ messages | selectattr('role', 'equalto', 'user') | list | length }} users; "
        "{{ {'n': ns.count, 'gen': add_generation_prompt, 'first': (messages | first).content} | tojson }}\n"
        "{% for m in messages if m.role != 'system' %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{{ loop.index0 }}{{ m.role[0] | upper }}{{ m.content.split() | length }} {% endfor %}\n"
        "{{ (7 // 2) ~ (-7 % 3) ~ (2 ** 10) ~ (1.5 * 2) ~ ('ab' * 2) }} {{ messages[-1].content.endswith('?') }}\n"
        "{% if add_generation_prompt %}{{ bos_token ~ '>' }}{% endif %}"
    ),
    "indented": (
        "<start>\n"
        "  {% for m in messages %}\n"
        "    {% if m.role == 'user' %}\n"
        "    U: {{ m.content }}\n"
        "    {% else %}\n"
        "    O: {{ m.content }}\n"
        "    {% endif %}\n"
        "  {% endfor %}\n"
        "{# a comment on its own line #}\n"
        "  {%- if add_generation_prompt %} GEN {% endif -%}\n"
        "<end>\n"
    ),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who won in 2014?"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2?"}],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "  padded question \n"},
        {"role": "assistant", "content": "  an answer longer than twelve  "},
        {"role": "user", "content": "é ⚽ 中文 \"quoted\" \\ back"},
    ],
    [{"role": "assistant", "content": "starts with the assistant"}],
    [{"role": "user", "content": "multi\nline\n\ncontent"}, {"role": "assistant", "content": "x"}],
    [],
]

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))
    args = parser.parse_args()
    templates = dict(TEMPLATES)
    for name in ["smollm2_135m_instruct", "tinyllama_chat"]:
        with open(os.path.join(args.shared, "tokenizers", name, "tokenizer_config.json"), encoding="utf-8") as f:
            templates[name] = json.load(f)["chat_template"]
    env = environment()
    os.makedirs(args.out, exist_ok=True)
    lines = 0
    with open(os.path.join(args.out, "chat_templates.jsonl"), "w", encoding="utf-8") as out:
        for name, source in templates.items():
            template = env.from_string(source)
            for messages in CONVERSATIONS:
                for generation in (True, False):
                    context = dict(SPECIAL, messages=messages, add_generation_prompt=generation)
                    record = {"name": name, "template": source, "context": context}
                    try:
                        record["rendered"] = template.render(**context)
                    except Exception as e:  # noqa: BLE001 - the class is the reference
                        record["error"] = type(e).__name__ + ": " + str(e)
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    lines += 1
    print(f"wrote {lines} renderings of {len(templates)} templates to {args.out}/chat_templates.jsonl")


if __name__ == "__main__":
    main()
