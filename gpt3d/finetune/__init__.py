"""Fine-tuning and alignment: SFT, GPT-1 classification, reward models, DPO (docs/finetune-and-align.md)."""
