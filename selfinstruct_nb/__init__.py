"""Self-Instruct, GPT-4-LLM and Orca instruction-data pipelines as literate, reproducible notebooks

Modules:

- `selfinstruct_nb.analysis`: Self-Instruct (Wang et al., arXiv:2212.10560v2) §3.1-3.2 (Table 1, Figures 3-5): the statistics table, the verb-noun sunburst, the ROUGE-L-to-seed histogram and the length histograms, for the seed tasks, the 252 user-oriented instructions or a generated set.
- `selfinstruct_nb.batch`: Large offline jobs (teacher answers, ratings, judge reviews) at half the price: the same requests, cache, journal and results as `llm.LLMClient`, sent as one file and collected when the batch is done.
- `selfinstruct_nb.bootstrap`: Self-Instruct's first stage (Wang et al., arXiv:2212.10560v2, §2.2 and Figure 2): grow a pool of instructions from the 175 seeds by asking the model for "Task 9:" onwards, keeping only new instructions that pass the filters.
- `selfinstruct_nb.classify`: Self-Instruct's second stage (Wang et al., arXiv:2212.10560v2, §2.2 "Classification Task Identification"): the model itself labels each new instruction as a classification task (finite output labels) or not, with a few-shot Yes/No prompt.
- `selfinstruct_nb.eval_rouge`: GPT-4-LLM's Unnatural Instructions figure: mean ROUGE-L against the gold output, per model, overall and per gold-length bucket (0-2, 3-5, 6-10, >10 words), with the count in each bucket.
- `selfinstruct_nb.experiment`: The paper's experiment on a 2-core CPU: the same base LM fine-tuned on its own filtered Self-Instruct data and, as a control, on the 175 seed tasks only; the three models scored on the 252 user-oriented instructions by the log-likelihood of the gold outputs and by ROUGE-L of greedy answers, each difference with a bootstrap interval.
- `selfinstruct_nb.instances`: Self-Instruct's third stage (Wang et al., arXiv:2212.10560v2, §2.2 "Instance Generation"): for each new instruction the model writes input/output instances, input-first for generation tasks and output-first for classification tasks.
- `selfinstruct_nb.judge`: The Vicuna / GPT-4-LLM protocol: a judge model rates two answers 1-10 with FastChat's reviewer prompts; review parsing (strict like FastChat, and robust), totals and relative scores, both orders, single-answer grading.
- `selfinstruct_nb.llm`: One way to send completion and chat requests to an OpenAI-compatible server or a local `transformers` model: cached, concurrent, retried, resumable, and every request accounted for.
- `selfinstruct_nb.mc`: Orca's zero-shot reasoning evaluation: prompts, answer extraction (strict and lenient), log-likelihood scoring of the options, and per-task accuracy tables with the macro average.
- `selfinstruct_nb.prompts`: The four prompt templates of Self-Instruct (Wang et al., arXiv:2212.10560v2, §2.2 and the appendix's prompt templates): instruction generation, classification-task identification, and instance generation input-first and output-first, with the sampling settings of the reference code.
- `selfinstruct_nb.reward`: GPT-4-LLM's comparison data: GPT-4 scores several answers to one prompt; every two answers with different scores make a preference pair, and a reward model learns to rank them (trl's `RewardTrainer`).
- `selfinstruct_nb.scores`: GPT-4-LLM's comparison data: GPT-4's 1-10 ratings of the answers of GPT-4, GPT-3.5 and OPT-IML to the Alpaca instructions, their counts, means and distributions.
- `selfinstruct_nb.sft`: Instruction data turned into prompt/completion pairs, packed to `max_length` with the loss on the answer only, trained with trl's `SFTTrainer` (LoRA or full), stage after stage as in Orca; then the student answers."""

__version__ = "0.1.0"
