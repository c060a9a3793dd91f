from lit_llm.data.pretrain import PretrainDataModule

__all__ = ["PretrainDataModule"]
