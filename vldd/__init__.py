"""vldd: vision-language dataset distillation (VLCP, Zou et al., ICCV 2025) on the Hugging Face stack."""

__version__ = "0.1.0"
