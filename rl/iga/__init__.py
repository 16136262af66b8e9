"""Iterative Graph Alignment (Yu et al., arXiv 2408.16667; Temus-AI/IterativeGraphAlignment).

- ``graph``   logical graph: paper JSON schema, parsing model text (None on failure), reverse /
              transitive enhancement, hint lines;
- ``prompts`` IGP and SAIL prompt templates (official wording + a compact student form), parsers;
- ``igp``     iterative graph prompting for the teacher, with the self-check gate;
- ``agents``  the ``ChatModel`` protocol: OpenAI-compatible client, offline rule teacher and
              scripted helpers, ``StudentChat`` over the JAX sampler;
- ``sail``    the student loop (gaps, hinted retries, helpers, parrots, hint-free cumulative SFT);
- ``sft``     completion-only fine-tuning with ``lm.train``; ``words`` the closed-vocab tokenizer.
Flagged deviations: the graph travels as text, not as a rendered image; the student's self-check
is replaced by a reference-agreement judge; exact checkers replace the LLM judge at test time.
"""
